(function () {
  const D = JSON.parse(document.getElementById('spectra-data').textContent);
  const CFG = D.plotly_config;
  const $ = (id) => document.getElementById(id);
  const clone = (x) => structuredClone(x);
  Object.entries(D.figures).forEach(([name, fig]) =>
    Plotly.newPlot('fig-' + name, clone(fig.data), clone(fig.layout), CFG));

  function fill(select, values, chosen) {
    values.forEach((v) => { const o = document.createElement('option');
      o.value = v; o.textContent = v; o.selected = v === chosen; select.appendChild(o); });
  }
  const armSel = $('arm-select'), budgetSel = $('budget-select'), ruleSel = $('rule-select');
  fill(armSel, D.arms, D.initial.arm);
  fill(budgetSel, D.budgets, D.initial.budget);

  function heatmap(id, z, title, colorscale, zmid) {
    const trace = {type: 'heatmap', z: z, colorscale: colorscale,
      hovertemplate: 'layer %{y}, head %{x}: %{z:.3f}<extra></extra>'};
    if (zmid !== undefined) trace.zmid = zmid;
    Plotly.react(id, [trace], {template: D.template, title: {text: title}, height: 420,
      xaxis: {title: {text: 'head'}, dtick: 1}, yaxis: {title: {text: 'layer'}}}, CFG);
  }
  function showHeads() {
    const arm = armSel.value, budget = budgetSel.value;
    const z = (D.heads[arm] || {})[budget] || [];
    heatmap('head-heatmap', z, 'keys kept per head · ' + arm + ' at budget ' + budget, 'Viridis');
  }
  function showRule() {
    const which = ruleSel.value, budget = budgetSel.value;
    const title = ruleSel.options[ruleSel.selectedIndex].textContent + ' · budget ' + budget;
    heatmap('rule-heatmap', (D.rules[budget] || {})[which] || [], title, D.diverging, 0);
  }
  armSel.addEventListener('change', showHeads);
  budgetSel.addEventListener('change', () => { showHeads(); showRule(); });
  ruleSel.addEventListener('change', showRule);
  showHeads();
  showRule();
  document.body.dataset.ready = '1';
})();
