//VERSION=3
// lulc evalscript v2 — cloud-masked composites; one Process API request per tile, four outputs as a multi-part tar:
//   s2    Sentinel-2 L2A surface reflectance x 10000 (DN, harmonised), composite of the valid observations  UINT16
//   cloud SCL and CLM of the observation the composite took first (least cloudy / first valid)              UINT8
//   s1    Sentinel-1 GRD VV/VH backscatter in dB (median of the time frame's observations)                    FLOAT32
//   dem   Copernicus DEM GLO-30 height in metres                                                               FLOAT32
// The last band of every output is 1 where the output has a valid value, 0 where not (for s2: no observation
// of the time frame is cloud-free at this pixel -> nodata, never a class).
// A Sentinel-2 observation is invalid when dataMask is 0, SCL is 1 (saturated/defective), 3 (cloud shadow),
// 8/9 (cloud medium/high probability) or 10 (thin cirrus), or CLM is 1 — when LULC_SPEC.cloud_mask is true.
// ORBIT mosaicking: every acquisition day (orbit) of the time frame is a sample. LULC_SPEC.composite:
//   "median"       per band the median of the valid samples (the same rule as the local and STAC stores,
//                  lulc_core/imagery/clouds.py); the order of the samples does not matter.
//   "least_cloudy" per pixel the first valid sample with the orbits sorted least cloudy first (preProcessScenes):
//                  the least cloudy scene where it is clear, its flagged pixels filled from the next scene, and so on
//                  (SIMPLE mosaicking would leave them as gaps).
// Processing units count every sample (lulc_core.imagery.sentinelhub.tile_processing_units estimates them).
// LULC_SPEC is strict JSON: lulc reads it to name the bands of each output, and writes its configured
// composite/cloud_mask into it before sending, so a cached response always matches its settings.
const LULC_SPEC = {
  "version": "lulc_v2",
  "composite": "median",
  "cloud_mask": true,
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
const SCL_INVALID = [1, 3, 8, 9, 10];
const MEDIAN = LULC_SPEC.composite === "median";

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
    }),
    mosaicking: Mosaicking.ORBIT
  };
}

// Sentinel Hub hands evaluatePixel the ORBIT samples in the order of the orbits preProcessScenes returns. It does
// not document that mosaickingOrder (leastCC) orders them, and its examples sort them themselves (Evalscript V3
// page, "Select one image per month": sort by dateFrom), so least_cloudy sorts here. Shapes of `collections`
// (Evalscript V3 page, "preProcessScenes"): one data source collections.scenes.orbits; data fusion
// collections.<datasource id>.scenes.orbits (the same page's updateOutput uses collection.<id>.scenes for data
// fusion; the public CLMS HR-VPP drought-impact evalscript sorts collections.VPP1.scenes.orbits) — lulc_v2 fuses s2,
// s1 and dem, so collections.s2. An orbit's cloud cover is the MEAN cloudCoverage of its tiles: the tiles of one
// orbit are the granules (about 110 km each) of one day's pass mosaicked over the request, each percentage is for its
// whole granule, so none is the cloud over our few kilometres; the mean estimates it without letting one cloudy
// neighbour granule that barely touches the request (the max would) push a clear day behind a cloudy one. Ties:
// newest first. The V3 page describes these orbits without `tiles`: where no orbit carries a cloudCoverage the order
// is left as the service gave it (with leastCC, if it honours that order for ORBIT). Orbits without one go last.
function orbitCloudCover(orbit) {
  const covers = (orbit.tiles || []).map(function (t) { return t.cloudCoverage; }).filter(function (c) {
    return typeof c === "number" && isFinite(c);
  });
  return covers.length ? covers.reduce(function (a, b) { return a + b; }, 0) / covers.length : null;
}

function leastCloudyFirst(orbits) {
  const keyed = orbits.map(function (orbit) {
    return {orbit: orbit, cover: orbitCloudCover(orbit), time: new Date(orbit.dateFrom).getTime()};
  });
  if (keyed.every(function (k) { return k.cover === null; })) {
    return orbits;
  }
  keyed.sort(function (a, b) {
    if (a.cover === null || b.cover === null) {
      return (a.cover === null) - (b.cover === null) || b.time - a.time;
    }
    return a.cover - b.cover || b.time - a.time;
  });
  return keyed.map(function (k) { return k.orbit; });
}

function preProcessScenes(collections) {
  if (MEDIAN) {
    return collections;
  }
  const s2 = collections.scenes ? collections : collections.s2;  // one data source, or data fusion
  if (s2 && s2.scenes && Array.isArray(s2.scenes.orbits)) {
    s2.scenes.orbits = leastCloudyFirst(s2.scenes.orbits);
  }
  return collections;
}

function clearView(s) {
  if (s.dataMask !== 1) {
    return false;
  }
  return !LULC_SPEC.cloud_mask || (SCL_INVALID.indexOf(s.SCL) < 0 && s.CLM !== 1);
}

function median(samples, value) {
  if (samples.length === 1) {
    return value(samples[0]);  // the common case of one clear look: no sorting
  }
  const v = samples.map(value).sort(function (a, b) { return a - b; });
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

function toDb(linear) {
  return 10 * Math.log(Math.max(linear, 1e-10)) / Math.LN10;
}

function evaluatePixel(samples) {
  const s2 = (samples.s2 || []).filter(clearView);
  const s1 = (samples.s1 || []).filter(function (s) { return s.dataMask === 1; });
  const dem = (samples.dem || []).filter(function (s) { return s.dataMask === 1; });
  const s2Ok = s2.length > 0;
  const s1Ok = s1.length > 0;
  const s2Values = S2_BANDS.map(function (band) {
    if (!s2Ok) {
      return 0;
    }
    return MEDIAN ? median(s2, function (s) { return s[band]; }) : s2[0][band];
  });
  return {
    s2: s2Values.concat([s2Ok ? 1 : 0]),
    cloud: [s2Ok ? s2[0].SCL : 0, s2Ok ? s2[0].CLM : 0, s2Ok ? 1 : 0],
    s1: [
      s1Ok ? median(s1, function (s) { return toDb(s.VV); }) : 0,
      s1Ok ? median(s1, function (s) { return toDb(s.VH); }) : 0,
      s1Ok ? 1 : 0
    ],
    dem: [dem.length ? dem[0].DEM : 0, dem.length ? 1 : 0]
  };
}
