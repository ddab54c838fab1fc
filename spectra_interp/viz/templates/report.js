(function () {
  const D = JSON.parse(document.getElementById('spectra-data').textContent);
  const CFG = {responsive: true, displaylogo: false};
  const clone = (x) => structuredClone(x);
  const $ = (id) => document.getElementById(id);
  const plot = (id, fig) => { if (fig) Plotly.newPlot(id, clone(fig.data), clone(fig.layout), CFG); };
  plot('heatmap', D.figures.heatmap);
  plot('verdict-fig', D.figures.verdict);
  plot('distribution-fig', D.figures.distribution);
  plot('uncertainty-fig', D.figures.uncertainty);
  plot('robustness-fig', D.figures.robustness);
  plot('random-init-fig', D.figures.random_init);
  plot('gain-fig', D.figures.gain);
  plot('alpha-fig', D.figures.alpha);

  // --- the heatmap's metric switch -------------------------------------------------------------
  const metricSel = $('metric-select');
  Object.entries(D.metrics).forEach(([name, m]) => metricSel.add(new Option(m.label, name)));
  function showMetric(name) {
    const m = D.metrics[name];
    Plotly.restyle('heatmap', {z: [m.z], zmin: [m.zmin], zmax: [m.zmax], colorscale: [m.colorscale],
      zmid: [m.colorscale === 'RdBu' ? 0 : null], 'colorbar.title.text': [m.label]}, [0]);
    Plotly.relayout('heatmap', {'title.text': m.label + ' per head (outlined: passes)'});
    $('heatmap').dataset.metric = name;
  }
  metricSel.addEventListener('change', () => showMetric(metricSel.value));
  $('heatmap').dataset.metric = metricSel.value;

  // --- decoding the stored arrays --------------------------------------------------------------
  const bytes = (s) => { const b = atob(s); const a = new Uint8Array(b.length);
    for (let i = 0; i < b.length; i++) a[i] = b.charCodeAt(i); return a; };
  const A = D.attention;
  const slices = A ? A.slices.map((s) => ({label: s.label, tokens: s.tokens,
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

  // --- one head ---------------------------------------------------------------------------------
  function showStats(key) {
    const row = D.rows[key], el = $('head-stats');
    if (!row) { el.innerHTML = '<tr><td>No row in head_stats.csv.</td></tr>'; return; }
    el.innerHTML = '';
    Object.entries(row).forEach(([k, v]) => {
      const tr = el.insertRow(), th = document.createElement('th');
      th.textContent = k; th.title = D.glossary[k] || '';
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
    note.textContent = s.label + ', layer ' + l + ', head ' + h + ': attention among these ' + T +
      ' tokens (keys before the slice are not drawn; H is over every key a query sees).';
    renderCV('pattern-view', 'AttentionPattern', {tokens: s.tokens, attention: att,
      maxValue: 1, minValue: 0, maskUpperTri: true, showAxisLabels: true});
    renderCV('token-view', 'ColoredTokensMulti', {tokens: s.tokens, values: values,
      labels: ['entropy H (nats)', '‖q‖']});
  }
  const toggle = $('model-toggle');
  let model = 'trained';
  Object.entries(D.models).forEach(([name, label]) => {
    const id = 'model-' + name, input = document.createElement('input');
    input.type = 'radio'; input.name = 'model'; input.id = id; input.value = name;
    input.checked = name === model;
    const lab = document.createElement('label'); lab.htmlFor = id; lab.textContent = label;
    toggle.append(input, lab);
    input.addEventListener('change', () => { model = name; showPanels(current[0], current[1]); });
  });
  function showPanels(l, h) {
    const key = l + ',' + h, P = (D.panels[model] || {})[key], none = $('panel-note');
    if (P && D.templates.density) {
      none.textContent = '';
      Plotly.react('density-fig', ...patched(D.templates.density, P.density), CFG);
      Plotly.react('position-fig', ...patched(D.templates.position, P.position), CFG);
    } else {
      none.textContent = 'No token sample for this head in the results folder.';
      Plotly.purge('density-fig'); Plotly.purge('position-fig');
    }
  }
  function showAlpha(l, h) {
    const curve = D.alpha && D.alpha.curves[l + ',' + h];
    if (!curve) { Plotly.purge('head-alpha-fig'); return; }
    Plotly.react('head-alpha-fig', [{x: D.alpha.scales, y: curve, mode: 'lines+markers',
      hovertemplate: 'alpha = %{x:.3f}<br>mean H = %{y:.3f}<extra></extra>'}],
      {template: D.figures.gain.layout.template, height: 300,
       title: {text: 'H with the query scaled by alpha · L' + l + ' H' + h},
       xaxis: {title: {text: 'alpha'}, type: 'log'}, yaxis: {title: {text: 'mean H (nats)'}},
       margin: {l: 60, r: 20, t: 50, b: 50}}, CFG);
  }
  const layerSel = $('layer-select'), headSel = $('head-select');
  D.layers.forEach((l) => layerSel.add(new Option('layer ' + l, l)));
  D.heads.forEach((h) => headSel.add(new Option('head ' + h, h)));
  let current = D.initial;
  function selectHead(l, h) {
    l = Number(l); h = Number(h);
    const key = l + ',' + h, message = $('head-message');
    if (!D.rows[key]) {
      message.hidden = false;
      message.textContent = 'There is no head L' + l + ' H' + h + ' in this run (layers ' +
        D.layers[0] + '–' + D.layers[D.layers.length - 1] + ', heads ' + D.heads[0] + '–' +
        D.heads[D.heads.length - 1] + '); still showing L' + current[0] + ' H' + current[1] + '.';
      return false;
    }
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
    if (location.hash !== '#L' + l + 'H' + h) history.replaceState(null, '', '#L' + l + 'H' + h);
    return true;
  }
  const fromHash = () => {
    const m = /^#L(\d+)H(\d+)$/.exec(location.hash);
    return m ? selectHead(m[1], m[2]) : false;
  };
  window.addEventListener('hashchange', () => {
    if (fromHash()) $('explorer').scrollIntoView();
  });
  sliceSel.addEventListener('change', () => showAttention(current[0], current[1]));
  $('heatmap').on('plotly_click', (ev) => {
    const p = ev.points && ev.points[0];
    if (p && selectHead(p.x, p.y)) $('explorer').scrollIntoView({behavior: 'smooth'});
  });
  layerSel.addEventListener('change', () => selectHead(layerSel.value, headSel.value));
  headSel.addEventListener('change', () => selectHead(layerSel.value, headSel.value));
  document.querySelectorAll('tr.pick').forEach((tr) => tr.addEventListener('click', () => {
    if (selectHead(tr.dataset.layer, tr.dataset.head)) {
      $('explorer').scrollIntoView({behavior: 'smooth'});
    }
  }));
  if (!fromHash()) {
    const message = $('head-message'), unknown = !message.hidden, text = message.textContent;
    selectHead(D.initial[0], D.initial[1]);
    if (unknown) { message.hidden = false; message.textContent = text; }
  }
  document.body.dataset.ready = '1';
})();
