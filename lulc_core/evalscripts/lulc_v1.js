//VERSION=3
// lulc evalscript v1 — one Process API request per tile, four outputs returned as a multi-part tar:
//   s2    Sentinel-2 L2A surface reflectance x 10000 (DN, harmonised), least-cloud mosaic  UINT16
//   cloud scene classification (SCL) and cloud mask (CLM)                                   UINT8
//   s1    Sentinel-1 GRD VV/VH backscatter in dB, orthorectified (coefficient set in the
//         request's processing.backCoeff)                                                   FLOAT32
//   dem   Copernicus DEM GLO-30 height in metres                                            FLOAT32
// The last band of every output is the dataMask of its source (1 = data, 0 = none).
// LULC_SPEC below is strict JSON: lulc reads it to name the bands of each output and to estimate processing
// units; setup() builds the inputs and outputs from it, so the two cannot drift apart.
const LULC_SPEC = {
  "version": "lulc_v1",
  "inputs": {
    "s2": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "SCL", "CLM", "dataMask"],
    "s1": ["VV", "VH", "dataMask"],
    "dem": ["DEM", "dataMask"]
  },
  "outputs": {
    "s2": {
      "bands": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "dataMask"],
      "sampleType": "UINT16"
    },
    "cloud": {"bands": ["SCL", "CLM", "dataMask"], "sampleType": "UINT8"},
    "s1": {"bands": ["VV", "VH", "dataMask"], "sampleType": "FLOAT32"},
    "dem": {"bands": ["DEM", "dataMask"], "sampleType": "FLOAT32"}
  }
};

const S2_BANDS = LULC_SPEC.outputs.s2.bands.slice(0, -1);

function setup() {
  return {
    input: Object.keys(LULC_SPEC.inputs).map(function (id) {
      const input = {datasource: id, bands: LULC_SPEC.inputs[id]};
      if (id === "s2") {
        input.units = "DN";
      }
      return input;
    }),
    output: Object.keys(LULC_SPEC.outputs).map(function (id) {
      return {id: id, bands: LULC_SPEC.outputs[id].bands.length, sampleType: LULC_SPEC.outputs[id].sampleType};
    })
  };
}

// With data fusion every source gives a list of samples; an empty list means no data at this pixel.
function first(samples, id) {
  const list = samples[id];
  return list && list.length > 0 ? list[0] : null;
}

function toDb(linear) {
  return 10 * Math.log(Math.max(linear, 1e-10)) / Math.LN10;
}

function evaluatePixel(samples) {
  const s2 = first(samples, "s2");
  const s1 = first(samples, "s1");
  const dem = first(samples, "dem");
  const s2Ok = s2 !== null && s2.dataMask === 1;
  const s1Ok = s1 !== null && s1.dataMask === 1;
  const demOk = dem !== null && dem.dataMask === 1;
  return {
    s2: S2_BANDS.map(function (band) { return s2Ok ? s2[band] : 0; }).concat([s2Ok ? 1 : 0]),
    cloud: [s2Ok ? s2.SCL : 0, s2Ok ? s2.CLM : 0, s2Ok ? 1 : 0],
    s1: [s1Ok ? toDb(s1.VV) : 0, s1Ok ? toDb(s1.VH) : 0, s1Ok ? 1 : 0],
    dem: [demOk ? dem.DEM : 0, demOk ? 1 : 0]
  };
}
