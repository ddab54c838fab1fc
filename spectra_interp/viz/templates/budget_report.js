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
  Plotly.newPlot('fig-ratio', clone(D.ratio.data), clone(D.ratio.layout), CFG);
  const armSel = $('arm-select'), budgetSel = $('budget-select'), allocSel = $('allocation-select');
  fill(armSel, D.arms, D.initial.arm);
  fill(budgetSel, D.budgets, D.initial.budget);
  fill(allocSel, D.allocation_arms, D.initial_allocation);

  function heatmap(id, z, title, colorscale) {
    const trace = {type: 'heatmap', z: z, colorscale: colorscale,
      hovertemplate: 'layer %{y}, head %{x}: %{z:.3f}<extra></extra>'};
    Plotly.react(id, [trace], {template: D.template, title: {text: title}, height: 420,
      xaxis: {title: {text: 'head'}, dtick: 1}, yaxis: {title: {text: 'layer'}}}, CFG);
  }
  function showHeads() {
    const arm = armSel.value, budget = budgetSel.value;
    const z = (D.heads[arm] || {})[budget] || [];
    heatmap('head-heatmap', z, 'keys kept per head · ' + arm + ' at budget ' + budget, 'Viridis');
  }
  function showAllocation() {
    const arm = allocSel.value, budget = budgetSel.value;
    const grid = (D.allocation[arm] || {})[budget] || {z: [], rows: []};
    Plotly.react('allocation-heatmap', [{type: 'heatmap', z: grid.z, y: grid.rows,
      colorscale: 'Viridis',
      hovertemplate: '%{y}, position bin %{x}: %{z:.3f}<extra></extra>'}],
      {template: D.template, title: {text: 'allocated fraction · ' + arm + ' at budget ' + budget},
       height: Math.max(420, 12 * grid.rows.length),
       xaxis: {title: {text: 'bin of log(keys seen)'}, dtick: 1},
       yaxis: {title: {text: 'layer.head'}}, margin: {l: 70}}, CFG);
  }
  armSel.addEventListener('change', showHeads);
  budgetSel.addEventListener('change', () => { showHeads(); showAllocation(); });
  allocSel.addEventListener('change', showAllocation);
  showHeads();
  showAllocation();
  document.body.dataset.ready = '1';
})();
