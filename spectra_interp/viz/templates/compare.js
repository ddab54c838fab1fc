(function () {
  const D = JSON.parse(document.getElementById('spectra-data').textContent);
  const CFG = D.plotly_config;
  const drawn = Object.entries(D.figures).map(([name, fig]) =>
    Plotly.newPlot('fig-' + name, fig.data, fig.layout, CFG));
  Promise.all(drawn).then(() => { document.body.dataset.ready = '1'; });
})();
