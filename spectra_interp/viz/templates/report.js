(function () {
  const D = JSON.parse(document.getElementById('spectra-data').textContent);
  const CFG = {responsive: true, displaylogo: false};
  const clone = (x) => structuredClone(x);
  const plot = (id, fig) => Plotly.newPlot(id, clone(fig.data), clone(fig.layout), CFG);
  plot('heatmap', D.figures.heatmap);
  plot('verdict-fig', D.figures.verdict);
  plot('distribution-fig', D.figures.distribution);
  const rows = {};
  D.table.forEach((r) => { rows[r.layer + ',' + r.head] = r; });
  const bytes = (s) => { const b = atob(s); const a = new Uint8Array(b.length);
    for (let i = 0; i < b.length; i++) a[i] = b.charCodeAt(i); return a; };
  const A = D.attention;
  let pat = null, qn = null, en = null;
  if (A) { pat = new Uint16Array(bytes(A.pattern).buffer);
    qn = new Float32Array(bytes(A.qnorm).buffer); en = new Float32Array(bytes(A.entropy).buffer); }
  let cvCount = 0;
  function renderCV(hostId, component, props) {
    const host = document.getElementById(hostId);
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
  function fmt(v) {
    if (v === null || v === undefined) return '—';
    if (typeof v !== 'number') return String(v);
    return Number.isInteger(v) ? v.toLocaleString('en') : v.toPrecision(4);
  }
  function showStats(row) {
    const el = document.getElementById('head-stats');
    if (!row) { el.innerHTML = '<tr><td>No row in head_stats.csv.</td></tr>'; return; }
    el.innerHTML = Object.keys(row).map((k) =>
      '<tr><th>' + k + '</th><td>' + fmt(row[k]) + '</td></tr>').join('');
  }
  function showAttention(l, h) {
    const note = document.getElementById('attention-note');
    if (!A || l >= A.layers || h >= A.heads) {
      note.textContent = 'No attention sample for this head in the results folder.';
      document.getElementById('pattern-view').innerHTML = '';
      document.getElementById('token-view').innerHTML = '';
      return;
    }
    const T = A.T, base = (l * A.heads + h) * T * T, att = [];
    for (let i = 0; i < T; i++) { const row = new Array(T);
      for (let j = 0; j < T; j++) row[j] = pat[base + i * T + j] / 65535; att.push(row); }
    const vb = (l * A.heads + h) * T, values = [];
    for (let i = 0; i < T; i++) values.push([en[vb + i], qn[vb + i]]);
    note.textContent = 'The first ' + T + ' tokens of window 0, layer ' + l + ', head ' + h + '.';
    renderCV('pattern-view', 'AttentionPattern', {tokens: A.tokens, attention: att,
      maxValue: 1, minValue: 0, maskUpperTri: true, showAxisLabels: true});
    renderCV('token-view', 'ColoredTokensMulti', {tokens: A.tokens, values: values,
      labels: ['entropy H (nats)', '‖q‖']});
  }
  const layerSel = document.getElementById('layer-select');
  const headSel = document.getElementById('head-select');
  D.layers.forEach((l) => layerSel.add(new Option('layer ' + l, l)));
  D.heads.forEach((h) => headSel.add(new Option('head ' + h, h)));
  function selectHead(l, h) {
    l = Number(l); h = Number(h);
    const key = l + ',' + h, label = document.getElementById('head-label');
    label.textContent = 'L' + l + ' H' + h;
    label.dataset.layer = l; label.dataset.head = h;
    layerSel.value = l; headSel.value = h;
    showStats(rows[key]);
    const P = D.panels[key];
    const none = document.getElementById('panel-note');
    if (P && D.templates.density) {
      none.textContent = '';
      Plotly.react('density-fig', ...patched(D.templates.density, P.density), CFG);
      Plotly.react('position-fig', ...patched(D.templates.position, P.position), CFG);
    } else {
      none.textContent = 'No token sample for this head in the results folder.';
      Plotly.purge('density-fig'); Plotly.purge('position-fig');
    }
    showAttention(l, h);
    Plotly.relayout('heatmap', {shapes: [{type: 'rect', xref: 'x', yref: 'y',
      x0: l - 0.5, x1: l + 0.5, y0: h - 0.5, y1: h + 0.5,
      line: {color: '#f1c40f', width: 3}}]});
    if (location.hash !== '#L' + l + 'H' + h) history.replaceState(null, '', '#L' + l + 'H' + h);
  }
  document.getElementById('heatmap').on('plotly_click', (ev) => {
    const p = ev.points && ev.points[0];
    if (p) { selectHead(p.x, p.y);
      document.getElementById('explorer').scrollIntoView({behavior: 'smooth'}); }
  });
  layerSel.addEventListener('change', () => selectHead(layerSel.value, headSel.value));
  headSel.addEventListener('change', () => selectHead(layerSel.value, headSel.value));
  document.querySelectorAll('tr.pick').forEach((tr) => tr.addEventListener('click', () => {
    selectHead(tr.dataset.layer, tr.dataset.head);
    document.getElementById('explorer').scrollIntoView({behavior: 'smooth'}); }));
  const m = /^#L(\d+)H(\d+)$/.exec(location.hash);
  if (m && rows[m[1] + ',' + m[2]]) selectHead(m[1], m[2]);
  else selectHead(D.initial[0], D.initial[1]);
  document.body.dataset.ready = '1';
})();
