(function () {
  const $ = (id) => document.getElementById(id);
  const D = JSON.parse($('spectra-data').textContent);
  const CFG = D.plotly_config;
  const clone = (x) => structuredClone(x);
  const drawn = [];
  const plot = (id, fig) => {
    if (fig) drawn.push(Plotly.newPlot(id, clone(fig.data), clone(fig.layout), CFG));
    else $(id).closest('.half').hidden = true;
  };
  plot('heatmap', D.figures.heatmap);
  plot('verdict-fig', D.figures.verdict);
  plot('distribution-fig', D.figures.distribution);
  plot('uncertainty-fig', D.figures.uncertainty);
  plot('robustness-fig', D.figures.robustness);
  plot('random-init-fig', D.figures.random_init);
  plot('gain-fig', D.figures.gain);
  plot('alpha-fig', D.figures.alpha);

  // --- the heatmap's metric switch: each metric's fixed range, colours and out-of-range marks --
  const metricSel = $('metric-select');
  Object.entries(D.metrics).forEach(([name, m]) => metricSel.add(new Option(m.label, name)));
  function showMetric(name) {
    const m = D.metrics[name], out = m.outside;
    Plotly.restyle('heatmap', {z: [m.z], zmin: [m.zmin], zmax: [m.zmax], zmid: [m.zmid],
      colorscale: [m.colorscale], 'colorbar.title.text': [m.short], hovertemplate: [m.hover],
      name: [m.label]}, [0]);
    Plotly.restyle('heatmap', {x: [out.x], y: [out.y], text: [out.text],
      'marker.symbol': [out.symbol]}, [2]);
    Plotly.relayout('heatmap', {'title.text': m.title});
    $('metric-note').textContent = m.note + ' ' + (out.x.length
      ? out.x.length + (out.x.length === 1 ? ' head lies' : ' heads lie') + ' outside it.'
      : 'No head lies outside it.');
    $('heatmap').dataset.metric = name;
  }
  metricSel.addEventListener('change', () => showMetric(metricSel.value));
  if (metricSel.value) showMetric(metricSel.value);

  // --- decoding the stored arrays --------------------------------------------------------------
  const bytes = (s) => { const b = atob(s); const a = new Uint8Array(b.length);
    for (let i = 0; i < b.length; i++) a[i] = b.charCodeAt(i); return a; };
  const A = D.attention;
  const slices = A ? A.slices.map((s) => Object.assign({}, s, {
    pattern: bytes(s.pattern),
    qnorm: new Float32Array(bytes(s.qnorm).buffer),
    entropy: new Float32Array(bytes(s.entropy).buffer)})) : [];
  const sliceSel = $('slice-select');
  slices.forEach((s, i) => sliceSel.add(new Option(s.label, i)));

  let cvCount = 0;
  function renderCV(hostId, component, props) {
    const host = $(hostId);
    host.innerHTML = '';
    const div = document.createElement('div');
    div.id = hostId + '-' + (++cvCount);
    host.appendChild(div);
    CircuitsVis.render(div.id, CircuitsVis[component], props);
  }
  function patched(t, p) {
    const fig = clone(t);
    const data = fig.data.map((tr, i) => Object.assign(tr, clone(p.traces[i] || {})));
    fig.layout.title = Object.assign(fig.layout.title || {}, {text: p.title});
    return [data, fig.layout];
  }

  // --- which model each panel shows, said on the panel -------------------------------------------
  const toggle = $('model-toggle');
  let model = 'trained';
  const hasPanels = (m, key) => Boolean((D.panels[m] || {})[key]);
  // density and position follow the toggle; the other views exist for the trained model only.
  const panelModel = {
    density: (key) => (hasPanels(model, key) ? model : 'trained'),
    position: (key) => (hasPanels(model, key) ? model : 'trained'),
    attention: () => 'trained', tokens: () => 'trained', alpha: () => 'trained',
    stats: () => 'trained',
  };
  function tagPanels(key) {
    const several = Object.keys(D.models).length > 1;
    document.querySelectorAll('.panel').forEach((el) => {
      const shown = panelModel[el.dataset.panel](key), tag = el.querySelector('.model-tag');
      el.dataset.model = shown;
      tag.classList.toggle('other', shown !== model);
      tag.textContent = !several ? '' : shown === model ? (D.models[shown] || shown) + ' model'
        : 'trained model: this view has no ' + D.models[model] + ' data';
    });
  }

  // --- one head ---------------------------------------------------------------------------------
  function showStats(key) {
    const row = D.rows[key], el = $('head-stats');
    if (!row) { el.innerHTML = '<tr><td>No row in head_stats.csv.</td></tr>'; return; }
    el.innerHTML = '';
    Object.entries(row).forEach(([k, v]) => {
      const tr = el.insertRow(), th = document.createElement('th');
      th.textContent = k; th.title = k + ': ' + (D.glossary[k] || 'a column of head_stats.csv');
      tr.appendChild(th); tr.insertCell().textContent = v;
    });
  }
  function showAttention(l, h) {
    const note = $('attention-note');
    const s = slices[Number(sliceSel.value) || 0];
    if (!s || l >= A.layers || h >= A.heads) {
      note.textContent = 'No attention slice for this head in the results folder.';
      $('pattern-view').innerHTML = ''; $('token-view').innerHTML = '';
      return;
    }
    const T = A.T, base = (l * A.heads + h) * T * T, att = [];
    for (let i = 0; i < T; i++) { const row = new Array(T);
      for (let j = 0; j < T; j++) row[j] = s.pattern[base + i * T + j] / A.levels; att.push(row); }
    const vb = (l * A.heads + h) * T, values = [];
    for (let i = 0; i < T; i++) values.push([s.entropy[vb + i], s.qnorm[vb + i]]);
    const first = s.doc_start === null ? s.start : s.doc_start;
    const where = s.doc === null ? 'window position' : 'position in ' + s.doc;
    note.textContent = s.label + ', layer ' + l + ', head ' + h + ': attention among these ' + T +
      ' tokens (keys before the slice are not drawn; H is over every key a query sees). Labels: ' +
      'token @ its ' + where + ' (its index in the slice).';
    const labelled = s.tokens.map((t, i) => t + ' @' + (first + i));
    renderCV('pattern-view', 'AttentionPattern', {tokens: labelled, attention: att,
      maxValue: 1, minValue: 0, maskUpperTri: true, showAxisLabels: true});
    renderCV('token-view', 'ColoredTokensMulti', {tokens: s.tokens, values: values,
      labels: ['entropy H (nats)', '‖q‖']});
  }
  Object.entries(D.models).forEach(([name, label]) => {
    const id = 'model-' + name, input = document.createElement('input');
    input.type = 'radio'; input.name = 'model'; input.id = id; input.value = name;
    input.checked = name === model;
    const lab = document.createElement('label'); lab.htmlFor = id; lab.textContent = label;
    toggle.append(input, lab);
    input.addEventListener('change', () => { model = name; showPanels(current[0], current[1]); });
  });
  function showPanels(l, h) {
    const key = l + ',' + h, none = $('panel-note');
    const P = (D.panels[panelModel.density(key)] || {})[key];
    if (P && D.templates.density) {
      none.textContent = '';
      Plotly.react('density-fig', ...patched(D.templates.density, P.density), CFG);
      Plotly.react('position-fig', ...patched(D.templates.position, P.position), CFG);
    } else {
      none.textContent = 'No token sample for this head in the results folder.';
      Plotly.purge('density-fig'); Plotly.purge('position-fig');
    }
    tagPanels(key);
  }
  function showAlpha(l, h) {
    const curve = D.alpha && D.alpha.curves[l + ',' + h];
    if (!curve) { Plotly.purge('head-alpha-fig'); return; }
    Plotly.react('head-alpha-fig', [{x: D.alpha.scales, y: curve, mode: 'lines+markers',
      hovertemplate: 'alpha = %{x:.3f}<br>mean H = %{y:.3f}<extra></extra>'}],
      {template: D.figures.gain.layout.template, height: 300,
       title: {text: 'H with the query scaled by alpha · L' + l + ' H' + h + ' · trained model'},
       xaxis: {title: {text: 'alpha'}, type: 'log'}, yaxis: {title: {text: 'mean H (nats)'}}},
      CFG);
  }
  const layerSel = $('layer-select'), headSel = $('head-select');
  D.layers.forEach((l) => layerSel.add(new Option('layer ' + l, l)));
  D.heads.forEach((h) => headSel.add(new Option('head ' + h, h)));
  let current = D.initial;
  const message = $('head-message');
  function unknownHead(l, h) {
    message.hidden = false;
    message.textContent = 'There is no head L' + l + ' H' + h + ' in this run (layers ' +
      D.layers[0] + '–' + D.layers[D.layers.length - 1] + ', heads ' + D.heads[0] + '–' +
      D.heads[D.heads.length - 1] + '); still showing L' + current[0] + ' H' + current[1] + '.';
  }
  // Select a head; `address` says whether the address bar follows (not for the default head).
  function selectHead(l, h, address = true) {
    l = Number(l); h = Number(h);
    const key = l + ',' + h;
    if (!D.rows[key]) { unknownHead(l, h); return false; }
    message.hidden = true;
    current = [l, h];
    const label = $('head-label');
    label.textContent = 'L' + l + ' H' + h;
    label.dataset.layer = l; label.dataset.head = h;
    layerSel.value = l; headSel.value = h;
    showStats(key);
    showPanels(l, h);
    showAlpha(l, h);
    showAttention(l, h);
    Plotly.relayout('heatmap', {shapes: [{type: 'rect', xref: 'x', yref: 'y',
      x0: l - 0.5, x1: l + 0.5, y0: h - 0.5, y1: h + 0.5,
      line: {color: '#f1c40f', width: 3}}]});
    if (address && location.hash !== '#L' + l + 'H' + h) {
      history.replaceState(null, '', '#L' + l + 'H' + h);
    }
    return true;
  }
  const HASH = /^#L(\d+)H(\d+)$/;
  const toExplorer = (smooth) => $('explorer').scrollIntoView(
    smooth ? {behavior: 'smooth'} : undefined);
  window.addEventListener('hashchange', () => {
    const m = HASH.exec(location.hash);
    if (m) { selectHead(m[1], m[2], false); toExplorer(false); }
  });
  sliceSel.addEventListener('change', () => showAttention(current[0], current[1]));
  $('heatmap').on('plotly_click', (ev) => {
    const p = ev.points && ev.points[0];
    if (p && selectHead(p.x, p.y)) toExplorer(true);
  });
  layerSel.addEventListener('change', () => selectHead(layerSel.value, headSel.value));
  headSel.addEventListener('change', () => selectHead(layerSel.value, headSel.value));
  document.querySelectorAll('tr.pick').forEach((tr) => tr.addEventListener('click', () => {
    if (selectHead(tr.dataset.layer, tr.dataset.head)) toExplorer(true);
  }));

  // --- the sortable head table and its CSV --------------------------------------------------------
  const headTable = $('head-table');
  headTable.querySelectorAll('th[data-sort]').forEach((th) => th.addEventListener('click', () => {
    const col = Number(th.dataset.sort), asc = !th.classList.contains('asc');
    headTable.querySelectorAll('th').forEach((x) => x.classList.remove('asc', 'desc'));
    th.classList.add(asc ? 'asc' : 'desc');
    const body = headTable.tBodies[0], rows = Array.from(body.rows);
    const key = (tr) => { const k = tr.cells[col].dataset.key, n = Number(k);
      return k === '' || Number.isNaN(n) ? k : n; };
    rows.sort((a, b) => { const x = key(a), y = key(b);
      const c = typeof x === 'number' && typeof y === 'number' ? x - y
        : String(x).localeCompare(String(y));
      return asc ? c : -c; });
    rows.forEach((tr) => body.appendChild(tr));
  }));
  $('csv-download').addEventListener('click', () => {
    const quote = (v) => (/[",\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v);
    const head = Array.from(headTable.tHead.rows[0].cells).map((c) => quote(c.textContent));
    const lines = [head.join(',')].concat(Array.from(headTable.tBodies[0].rows).map((tr) =>
      Array.from(tr.cells).map((c) => quote(c.dataset.key)).join(',')));
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([lines.join('\n') + '\n'], {type: 'text/csv'}));
    a.download = 'heads.csv';
    document.body.appendChild(a); a.click(); a.remove();
  });

  // --- the first head: the address's, else the strongest; a deep link scrolls to the explorer --
  const asked = HASH.exec(location.hash);
  const known = asked && selectHead(asked[1], asked[2], false);
  if (!known) {
    const text = message.textContent;
    selectHead(D.initial[0], D.initial[1], false);
    if (asked) { message.hidden = false; message.textContent = text; }
  }
  Promise.all(drawn).then(() => {
    if (asked) toExplorer(false);
    document.body.dataset.ready = '1';
  });
})();
