//VERSION=3
// lulc CORINE evalscript v1 — CORINE Land Cover from a Sentinel Hub BYOC collection (band CLC: legend index
// 1..44, 48 = no data), newest edition up to the label date (mostRecent mosaicking). One output, a single TIFF.
// LULC_SPEC below is strict JSON read by lulc (band names, processing-unit estimate).
const LULC_SPEC = {
  "version": "corine_v1",
  "inputs": {"corine": ["CLC", "dataMask"]},
  "outputs": {"corine": {"bands": ["CLC", "dataMask"], "sampleType": "UINT8"}}
};

function setup() {
  return {
    input: [{bands: LULC_SPEC.inputs.corine}],
    output: [{id: "corine", bands: 2, sampleType: LULC_SPEC.outputs.corine.sampleType}]
  };
}

function evaluatePixel(sample) {
  const ok = sample.dataMask === 1 && sample.CLC >= 1 && sample.CLC <= 44;
  return {corine: [ok ? sample.CLC : 0, ok ? 1 : 0]};
}
