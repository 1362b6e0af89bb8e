// The densegpu demo page: plain DOM controls around the wasm engine, which holds one model.
// window.demo and the element ids are a contract with the Playwright harness: keep them stable.

const MiB = 1024 * 1024;
const IMAGE = 32;
const EVAL_EVERY = 50;
const SPEED_WINDOW = 10;
const SMOOTH_WINDOW = 20;
const GENERATED = { train: 2000, test: 500, seed: 0 };
const IMAGE_RE = /\.(png|jpe?g)$/i;
const BIN_RE = /\.bin$/i;
const NO_WEBGPU =
  'This browser has no WebGPU (navigator.gpu is missing). Use Chrome or Edge 113+, Safari 26+, ' +
  'or Firefox 141+ on Windows; on Linux, Chromium needs --enable-unsafe-webgpu.';

const $ = (id) => document.getElementById(id);

const demo = (window.demo = {
  status: 'loading', errors: [], history: [], plans: null, adapter: null, kernels: null,
  lastEval: null, selftest: null, model: null, data: null, api: null, profile: null,
  // Checkpoints kept in the tab: each save, the offer made at start-up, the resume taken.
  saves: [], savedCheckpoint: null, resumed: null,
});

let dg = null;
const state = {
  modelKey: null, // settings + data version the current model was built from
  modelSettings: null,
  dataVersion: 0,
  runId: 0, // bumping it ends a training loop once its in-flight step returns
  runSteps: 0, // steps since Start, for #steps-limit
  stepTimes: [],
  evals: [], // test accuracies, for the chart
  busy: false, // a model is being built or a run is being stopped
  chartQueued: false,
};

// ---------------------------------------------------------------- errors, status, helpers

function reportError(err) {
  const message = err instanceof Error ? err.message : String(err?.message ?? err);
  demo.errors.push(message);
  $('error-text').textContent = message;
  $('error').hidden = false;
  console.error(err);
}
window.addEventListener('error', (e) => reportError(e.error ?? e.message));
window.addEventListener('unhandledrejection', (e) => reportError(e.reason));

// Every handler runs through this, so no failure is silent and the buttons always catch up.
const guarded = (fn) => async (...args) => {
  try {
    await fn(...args);
  } catch (e) {
    reportError(e);
  } finally {
    updateControls();
  }
};

function fatal(message) {
  reportError(new Error(message));
  $('adapter').textContent = 'Not available.';
  setStatus('error');
}

function setStatus(status) {
  demo.status = status;
  Object.assign($('status'), { textContent: status, className: `pill ${status}` });
  updateControls();
}

function updateControls() {
  const s = demo.status;
  const gpuReady = demo.adapter !== null && s !== 'error' && s !== 'loading';
  const running = s === 'training' || s === 'paused';
  $('start').disabled = !gpuReady || state.busy || s === 'training';
  $('pause').disabled = $('stop').disabled = !running || state.busy;
  $('pause').textContent = s === 'paused' ? 'Resume' : 'Pause';
  for (const id of ['evaluate', 'profile', 'download-onnx', 'download-weights', 'load-weights', 'classify-drawing']) {
    $(id).disabled = demo.model === null;
  }
  $('selftest').disabled = !gpuReady;
}

// The engine rejects a second async call while one runs ("busy"), so every GPU call waits
// its turn here: classifying or evaluating mid-training simply slots in between two steps.
let gpuQueue = Promise.resolve();
function onGpu(task) {
  const run = gpuQueue.then(task);
  gpuQueue = run.catch(() => {});
  return run;
}

const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));
// Small models are a few KiB: two decimals keep them from reading as zero.
const mib = (bytes) => (bytes == null ? '—' : (bytes / MiB).toFixed(bytes < MiB ? 3 : 1));
const pct = (x) => (x == null ? '—' : `${(x * 100).toFixed(1)}%`);
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = text;
  if (className) e.className = className;
  return e;
}

// headers: [[text, title?]]; rows: [{cells: [text | cell properties], className?, mode?}]
function tableOf(headers, rows, caption) {
  const table = el('table');
  const head = table.createTHead().insertRow();
  for (const [text, title] of headers) Object.assign(head.appendChild(el('th', text)), { title: title ?? text });
  const body = table.createTBody();
  for (const r of rows) {
    const row = Object.assign(body.insertRow(), { className: r.className ?? '' });
    if (r.mode) row.dataset.mode = r.mode;
    for (const c of r.cells) Object.assign(row.insertCell(), typeof c === 'object' ? c : { textContent: c });
  }
  if (caption) table.createCaption().textContent = caption;
  return table;
}

// ---------------------------------------------------------------- settings and memory plan

function readSettings() {
  const whole = (id, what) => {
    const v = Number($(id).value);
    if ($(id).value === '' || !Number.isInteger(v) || v < 1) throw new Error(`the ${what} must be a whole number ≥ 1`);
    return v;
  };
  const lr = Number($('lr').value);
  if (!(lr > 0 && Number.isFinite(lr))) throw new Error('the learning rate must be a positive number');
  return {
    depth: whole('depth', 'depth'), growth_rate: whole('growth', 'growth rate'), mode: $('mode').value,
    batch_size: whole('batch', 'batch size'), lr, seed: 0, kernels: $('kernels').value,
  };
}

const settingsKey = (s) => `${JSON.stringify(s)}#${state.dataVersion}`;

const PLAN_COLUMNS = [
  ['parameters', 'params'], ['gradients', 'grads'], ['optimizer', 'optim.'],
  ['activations', 'activ.'], ['workspace', 'work'], ['total', 'total'],
];

function refreshPlans() {
  let s;
  try {
    s = readSettings();
    if (!dg) return;
    // Class count only sizes the classifier; 10 stands in while there is no data.
    demo.plans = dg.memory_plans(s.depth, s.growth_rate, demo.data?.classes.length || 10, s.batch_size);
  } catch (e) {
    $('plan').replaceChildren(el('p', `Cannot plan: ${e.message}`, 'hint err'));
    return;
  }
  const plans = JSON.parse(demo.plans);
  const rows = plans.modes.map((m) => ({
    mode: m.mode,
    className: m.mode === s.mode ? 'chosen' : '',
    cells: [m.mode, ...(m.error
      ? [{ textContent: m.error, className: 'err', colSpan: PLAN_COLUMNS.length + 1 }]
      : [...PLAN_COLUMNS.map(([key]) => ({ textContent: mib(m[key]), title: `${m[key]} bytes` })),
        { textContent: String(m.shards.length), title: `images per batch shard: ${m.shards.join(' + ')}` }])],
  }));
  const caption = `MiB for a batch of ${plans.batch_size}; one binding may cover at most ${mib(plans.binding_limit)} MiB here.`;
  const header = [['mode'], ...PLAN_COLUMNS.map(([key, short]) => [short, key]), ['shards', 'batch shards: the batch is split so that each tensor fits one binding']];
  $('plan').replaceChildren(tableOf(header, rows, caption));
}

function onSettingsChanged() {
  refreshPlans();
  renderModelInfo();
}

// ---------------------------------------------------------------- data

// WebAssembly's memory is at most 4 GiB here (wasm32), and an added file's bytes, the images
// decoded from them and the model's copy of the data all live in it, so a file above a quarter
// of that is refused with its size before a byte of it is read.
const GiB = 1024 * MiB;
const MAX_FILE_BYTES = GiB;
const gib = (bytes) => (bytes / GiB).toFixed(2);
function tooLarge(file) {
  return file.size > MAX_FILE_BYTES
    ? `${gib(file.size)} GiB (${file.size.toLocaleString('en')} bytes) is more than this page can hold: at most ` +
      `${gib(MAX_FILE_BYTES)} GiB a file, as the file, its decoded images and the model share WebAssembly's 4 GiB ` +
      'memory. Split it into smaller batch files, or train on it with the native train_cifar'
    : null;
}

function showData(json) {
  const d = (demo.data = json == null ? null : JSON.parse(json));
  state.dataVersion++;
  if (!d || d.train + d.test === 0) {
    $('data-summary').textContent = 'No data: use the generated data or add files.';
  } else {
    $('data-summary').replaceChildren(
      el('div', `${d.train} training images, ${d.test} held out for testing, ${d.classes.length} classes:`),
      el('div', d.classes.map((c, i) => `${c} (${d.class_counts[i]})`).join(', '), 'classes'),
    );
  }
  onSettingsChanged();
}

// The seed is a u64 on the Rust side, which wasm-bindgen takes as a BigInt.
const useGenerated = () => showData(dg.use_generated_data(GENERATED.train, GENERATED.test, BigInt(GENERATED.seed)));
function clearData() {
  dg.clear_data();
  showData(null);
}

function addFile(bytes, file, path) {
  if (BIN_RE.test(file.name)) return dg.add_cifar_batch(bytes, file.name);
  // The class is the folder the file sits in: "set/cat/1.png" and "/cat/1.png" are both "cat".
  const folders = path.split('/').filter(Boolean).slice(0, -1);
  if (!folders.length) throw new Error('it is not inside a class folder: drop a folder whose sub-folders are the classes');
  return dg.add_image(bytes, file.name, folders.at(-1));
}

async function loadFiles(files) {
  const usable = files.filter(({ file }) => BIN_RE.test(file.name) || IMAGE_RE.test(file.name));
  if (!usable.length) throw new Error('none of these files is a CIFAR-10 .bin batch or a PNG/JPEG image');
  // Sorted, so classes are numbered alphabetically and each class gives ~10% to the test set.
  usable.sort((a, b) => a.path.localeCompare(b.path));
  const failures = [];
  let summary = null;
  for (const [i, { file, path }] of usable.entries()) {
    const refused = tooLarge(file);
    if (refused) {
      failures.push(`${path}: ${refused}`);
      continue;
    }
    try {
      summary = addFile(new Uint8Array(await file.arrayBuffer()), file, path);
    } catch (e) {
      failures.push(`${path}: ${e.message}`);
    }
    if (i % 100 === 99) {
      $('data-summary').textContent = `Adding files… ${i + 1} of ${usable.length}`;
      await nextTask();
    }
  }
  if (summary) showData(summary);
  if (failures.length) {
    const more = failures.length > 3 ? ` (and ${failures.length - 3} more)` : '';
    throw new Error(`${failures.length} of ${usable.length} files were not added: ${failures.slice(0, 3).join('; ')}${more}`);
  }
}

async function entryFiles(entries) {
  const out = [];
  const walk = async (entry) => {
    if (entry.isFile) out.push({ file: await new Promise((ok, fail) => entry.file(ok, fail)), path: entry.fullPath });
    if (!entry.isDirectory) return;
    const reader = entry.createReader();
    // readEntries hands a directory out in chunks (100 in Chrome) until it returns none.
    for (let chunk; (chunk = await new Promise((ok, fail) => reader.readEntries(ok, fail))).length; ) {
      for (const child of chunk) await walk(child);
    }
  };
  for (const entry of entries) await walk(entry);
  return out;
}

function onDataDrop(event) {
  // Entries must be taken before the first await: the DataTransfer is emptied afterwards.
  const items = [...event.dataTransfer.items].filter((i) => i.kind === 'file');
  const entries = items.map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
  const plain = [...event.dataTransfer.files].map((file) => ({ file, path: file.name }));
  return (async () => loadFiles(entries.length ? await entryFiles(entries) : plain))();
}

function onDataInput(event) {
  const files = [...event.target.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
  event.target.value = '';
  return loadFiles(files);
}

// ---------------------------------------------------------------- model and training

function renderModelInfo(error) {
  const info = $('model-info');
  const m = demo.model;
  const s = state.modelSettings;
  info.classList.toggle('err', Boolean(error));
  if (error) info.textContent = `Could not create the model: ${error}`;
  else if (!m) info.textContent = 'No model yet: Start builds one from the settings above.';
  else {
    let current = null;
    try { current = settingsKey(readSettings()); } catch { /* half-typed input: nothing to compare */ }
    info.textContent = `DenseNet-BC depth ${s.depth}, growth ${s.growth_rate}: ${m.parameters.toLocaleString()} ` +
      `parameters, ${m.mode} mode, batch ${m.batch_size}, ${m.classes.length} classes; plan ${mib(m.plan?.total)} MiB, ` +
      `allocated ${mib(m.allocated_bytes)} MiB.` +
      (current && current !== state.modelKey ? ' Settings or data changed: Start (once stopped) builds a new model.' : '');
  }
}

// The conv kernels' tuned choices for this browser's adapters, kept across visits so that a
// model's first Start times nothing it has timed before. Storage can be refused (private
// windows, full quota): the page then tunes again next time, which only costs time.
const KERNEL_CACHE = 'densegpu.kernels';
function readKernelCache() {
  try { return localStorage.getItem(KERNEL_CACHE); } catch { return null; }
}
function writeKernelCache(text) {
  try { localStorage.setItem(KERNEL_CACHE, text); } catch { /* see KERNEL_CACHE */ }
}

// The adapter line: the adapter, its binding limit and the conv kernel family it runs; once a
// model exists, what the tuning chose and what it took.
function showAdapter() {
  const k = demo.model?.kernels;
  let kernels = `${demo.kernels} conv kernels`;
  if (k && k.forced) kernels += ' (forced)';
  else if (k && k.timed > 0) kernels += ` (tuned ${k.timed} of ${k.shapes} shapes in ${k.seconds.toFixed(1)} s: ${k.register} register, ${k.workgroup} workgroup)`;
  else if (k && k.shapes > 0) kernels += ` (tuned before: ${k.register} register, ${k.workgroup} workgroup)`;
  $('adapter').textContent = `${demo.adapter} · binding limit ${mib(demo.bindingLimit)} MiB · ${kernels}`;
}

async function createModel(settings) {
  $('model-info').textContent = settings.kernels === 'auto' && !readKernelCache()
    ? 'Building the model and timing the conv kernels on this adapter (once; the choice is kept)…'
    : 'Building the model…';
  demo.model = state.modelKey = null;
  try {
    const request = { ...settings, kernel_cache: readKernelCache() };
    demo.model = JSON.parse(await onGpu(() => dg.create_model(JSON.stringify(request))));
    if (demo.model.kernel_cache) writeKernelCache(demo.model.kernel_cache);
    demo.kernels = demo.model.kernels.family;
    showAdapter();
  } catch (e) {
    renderModelInfo(e.message); // names the largest batch that fits, when that was the problem
    throw e;
  }
  Object.assign(state, { modelKey: settingsKey(settings), modelSettings: settings, stepTimes: [], evals: [] });
  demo.history = [];
  demo.lastEval = null;
  renderModelInfo();
  renderStats();
  drawChart();
}

async function start() {
  if (demo.status === 'paused') return runTraining();
  if (demo.status === 'training' || state.busy) return;
  const settings = readSettings();
  if (!demo.model || state.modelKey !== settingsKey(settings)) {
    state.busy = true;
    updateControls();
    try {
      await createModel(settings);
    } finally {
      state.busy = false;
    }
  }
  state.runSteps = 0;
  runTraining();
}

// ---------------------------------------------------------------- checkpoints in the tab

// The model's checkpoint (weights, momentum, where the run stands, the model request and where
// the data came from) is kept in IndexedDB at each epoch end and when a run stops or pauses, so
// a reload or a crashed tab loses at most the epoch in progress. One transaction puts it, so the
// previous checkpoint stays whole until the new one is in. Storage can be refused (private
// windows, quota): that is reported and training goes on.
const DB = { name: 'densegpu', store: 'checkpoints', key: 'latest' };
function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB.name, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(DB.store);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}
async function inStore(mode, use) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(DB.store, mode);
      const request = use(tx.objectStore(DB.store));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = tx.onabort = () => reject(tx.error ?? request.error);
    });
  } finally {
    db.close();
  }
}
const readCheckpoint = () => inStore('readonly', (s) => s.get(DB.key));

async function saveCheckpoint(why) {
  if (!demo.model) return;
  const bytes = await onGpu(() => dg.export_checkpoint());
  const info = JSON.parse(dg.checkpoint_info(bytes));
  const record = { bytes, savedAt: Date.now(), step: info.step, epoch: info.epoch, why };
  try {
    await inStore('readwrite', (s) => s.put(record, DB.key));
  } catch (e) {
    throw new Error(`the checkpoint (${mib(bytes.length)} MiB) could not be kept in this tab's storage ` +
      `(${e?.message ?? e}); training goes on, but download the weights to keep them`);
  }
  demo.saves.push({ step: info.step, epoch: info.epoch, why, bytes: bytes.length });
  $('checkpoint-status').textContent = `Checkpoint of step ${info.step} (${why}) kept in this tab's storage at ` +
    `${new Date(record.savedAt).toLocaleTimeString()}: after a reload the page offers to resume from it.`;
}

// At start-up: the checkpoint a previous visit kept, offered for resuming.
async function offerResume() {
  let record;
  try {
    record = await readCheckpoint();
  } catch {
    return; // no storage in this window: nothing was kept
  }
  if (!record) return;
  const info = (demo.savedCheckpoint = JSON.parse(dg.checkpoint_info(record.bytes)));
  const r = info.request;
  $('resume-text').textContent = `Kept in this tab from ${new Date(record.savedAt).toLocaleString()}: DenseNet-BC ` +
    `depth ${r.depth}, growth ${r.growth_rate}, ${r.mode} mode, batch ${r.batch_size}, after step ${info.step} ` +
    `(epoch ${info.epoch + 1}), trained on ${info.data_text}.` +
    (info.data_ready ? '' : ' The tab keeps the model, not the files: add the same files, then Resume.');
  $('resume-offer').hidden = false;
}

async function resumeCheckpoint() {
  if (demo.status === 'training' || demo.status === 'paused' || state.busy) {
    throw new Error('stop the current run before resuming the kept checkpoint');
  }
  const record = await readCheckpoint();
  if (!record) throw new Error('no checkpoint is kept in this tab any more');
  state.busy = true;
  updateControls();
  try {
    const out = JSON.parse(await onGpu(() => dg.resume_checkpoint(record.bytes, readKernelCache())));
    const r = JSON.parse(dg.checkpoint_info(record.bytes)).request;
    showData(JSON.stringify(out.data));
    for (const [id, value] of [['depth', r.depth], ['growth', r.growth_rate], ['mode', r.mode], ['batch', r.batch_size], ['lr', r.lr], ['kernels', r.kernels]]) {
      $(id).value = String(value);
    }
    demo.model = out.model;
    if (demo.model.kernel_cache) writeKernelCache(demo.model.kernel_cache);
    demo.kernels = demo.model.kernels.family;
    showAdapter();
    const settings = readSettings();
    Object.assign(state, { modelKey: settingsKey(settings), modelSettings: settings, stepTimes: [], evals: [] });
    Object.assign(demo, { history: [], lastEval: null, resumed: { step: out.step, epoch: out.epoch } });
    $('resume-offer').hidden = true;
    $('checkpoint-status').textContent = `Resumed at step ${out.step} (epoch ${out.epoch + 1}): Start goes on from there.`;
    onSettingsChanged();
    renderStats();
    drawChart();
    setStatus('stopped');
  } finally {
    state.busy = false;
  }
}

async function discardCheckpoint() {
  await inStore('readwrite', (s) => s.delete(DB.key));
  $('resume-offer').hidden = true;
  demo.savedCheckpoint = null;
}

function runTraining() {
  const id = ++state.runId;
  setStatus('training');
  trainLoop(id).catch((e) => {
    reportError(e); // e.g. a loss that blew up: the engine keeps the model, the run ends
    if (state.runId === id) {
      state.runId++;
      setStatus('stopped');
    }
    // The last checkpoint kept in the tab is from before the failure: offer to go back to it.
    offerResume().catch(reportError);
  });
}

async function trainLoop(id) {
  while (state.runId === id) {
    const [json, ms] = await onGpu(async () => {
      // Timed inside the queue, so a classification waiting its turn is not training time.
      const t0 = performance.now();
      const out = await dg.train_step();
      return [out, performance.now() - t0];
    });
    const result = JSON.parse(json);
    const step = recordStep(result, ms);
    state.runSteps++; // counted even when a pause came mid-step: the step did happen
    if (result.epoch_ended) await saveCheckpoint(`end of epoch ${result.epoch + 1}`).catch(reportError);
    if (state.runId !== id) return;
    const limit = Number($('steps-limit').value);
    if (limit > 0 && state.runSteps >= limit) return stop();
    if (step.step % EVAL_EVERY === 0 && demo.data?.test > 0) await evaluate().catch(reportError);
    await nextTask(); // lets the page paint and take input between steps
  }
}

function recordStep(r, ms) {
  state.stepTimes = [...state.stepTimes, ms].slice(-SPEED_WINDOW);
  const entry = {
    step: r.step, epoch: r.epoch, loss: r.loss, batch_accuracy: r.batch_accuracy,
    images_per_second: ((demo.model?.batch_size ?? 0) * 1000) / mean(state.stepTimes),
    allocated_bytes: r.allocated_bytes,
  };
  demo.history.push(entry);
  renderStats();
  scheduleChart();
  return entry;
}

function togglePause() {
  if (demo.status === 'paused') return runTraining();
  if (demo.status !== 'training') return;
  state.runId++;
  setStatus('paused');
  // Queued behind the step in flight, so it keeps the state the pause stopped at.
  saveCheckpoint('paused').catch(reportError);
}

// The status turns 'stopped' only once the final evaluation is in demo.lastEval.
async function stop() {
  if (demo.status !== 'training' && demo.status !== 'paused') return;
  state.runId++;
  state.busy = true;
  updateControls();
  try {
    if (demo.data?.test > 0) await evaluate();
  } catch (e) {
    reportError(e);
  }
  try {
    await saveCheckpoint('stopped');
  } catch (e) {
    reportError(e);
  } finally {
    state.busy = false;
    setStatus('stopped');
  }
}

// One training step timed launch by launch: the report is shown, the trace offered for download.
async function profile() {
  requireModel();
  const out = JSON.parse(await onGpu(() => dg.profile_step()));
  const link = $('profile-trace');
  if (link.href.startsWith('blob:')) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([JSON.stringify(out.trace)], { type: 'application/json' }));
  $('profile-report').textContent = out.report;
  $('profile-card').hidden = false;
  demo.profile = out;
}

async function evaluate() {
  const result = JSON.parse(await onGpu(() => dg.evaluate()));
  const step = demo.history.at(-1)?.step ?? 0;
  demo.lastEval = { ...result, step };
  state.evals.push({ step, accuracy: result.accuracy });
  renderStats();
  scheduleChart();
  return demo.lastEval;
}

function renderStats() {
  const h = demo.history.at(-1);
  const e = demo.lastEval;
  const items = [
    ['step', h?.step ?? '—'], ['epoch', h?.epoch ?? '—'], ['loss', h ? h.loss.toFixed(4) : '—'],
    ['batch accuracy', pct(h?.batch_accuracy)], ['images / second', h ? h.images_per_second.toFixed(1) : '—'],
    ['GPU memory (MiB)', mib(h?.allocated_bytes ?? demo.model?.allocated_bytes)],
    [e ? `test accuracy (step ${e.step}, ${e.images} images)` : 'test accuracy', pct(e?.accuracy)],
  ];
  $('stats').replaceChildren(...items.map(([label, value]) => {
    const box = el('div');
    box.append(el('b', String(value)), el('span', label));
    return box;
  }));
}

// ---------------------------------------------------------------- chart

// Trailing mean over the last `k` values, so one noisy batch does not hide the trend.
function runningMean(values, k) {
  let sum = 0;
  return values.map((v, i) => {
    sum += v - (i >= k ? values[i - k] : 0);
    return sum / Math.min(i + 1, k);
  });
}

function scheduleChart() {
  if (state.chartQueued) return;
  state.chartQueued = true;
  requestAnimationFrame(() => {
    state.chartQueued = false;
    drawChart();
  });
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((x) => x >= v);
}

const COLORS = { loss: '#d65a31', acc: '#2463c7', test: '#1e7a3c', grid: '#dde1e6', text: '#5d6873' };

function drawChart() {
  const canvas = $('chart');
  const dpr = window.devicePixelRatio || 1;
  const [w, h] = [canvas.clientWidth || 800, canvas.clientHeight || 260];
  // Sized to the CSS box times the pixel ratio, so lines stay crisp on any screen.
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const box = { l: 52, t: 24, w: w - 104, h: h - 58 };
  const hist = demo.history;
  const loss = runningMean(hist.map((e) => e.loss), SMOOTH_WINDOW);
  const acc = runningMean(hist.map((e) => e.batch_accuracy), SMOOTH_WINDOW);
  // Scaled to the smoothed loss: an early spike is clipped instead of flattening the rest.
  const lossMax = niceCeil(1.1 * loss.reduce((a, b) => Math.max(a, b), 0.5));
  const xMax = Math.max(10, hist.at(-1)?.step ?? 0);
  const x = (step) => box.l + (step / xMax) * box.w;
  const yLoss = (v) => box.t + box.h * (1 - Math.min(v, lossMax) / lossMax);
  const yAcc = (v) => box.t + box.h * (1 - v);
  drawAxes(g, box, xMax, lossMax);
  const xs = hist.map((e) => x(e.step));
  drawLine(g, xs, hist.map((e) => yLoss(e.loss)), COLORS.loss, 1, 0.25);
  drawLine(g, xs, hist.map((e) => yAcc(e.batch_accuracy)), COLORS.acc, 1, 0.2);
  drawLine(g, xs, loss.map(yLoss), COLORS.loss, 2);
  drawLine(g, xs, acc.map(yAcc), COLORS.acc, 2);
  g.fillStyle = COLORS.test;
  for (const e of state.evals) {
    g.beginPath();
    g.arc(x(e.step), yAcc(e.accuracy), 4, 0, 2 * Math.PI);
    g.fill();
  }
  drawLegend(g, box.l, 14);
}

function drawAxes(g, box, xMax, lossMax) {
  Object.assign(g, { font: '11px system-ui, sans-serif', strokeStyle: COLORS.grid, fillStyle: COLORS.text, lineWidth: 1 });
  const label = (text, px, py, align, angle = 0) => {
    g.save();
    g.translate(px, py);
    g.rotate(angle);
    g.textAlign = align;
    g.fillText(text, 0, 0);
    g.restore();
  };
  for (let i = 0; i <= 4; i++) {
    const y = box.t + (box.h * i) / 4;
    g.beginPath();
    g.moveTo(box.l, y);
    g.lineTo(box.l + box.w, y);
    g.stroke();
    label(((lossMax * (4 - i)) / 4).toFixed(2), box.l - 6, y + 4, 'right');
    label(`${25 * (4 - i)}%`, box.l + box.w + 6, y + 4, 'left');
  }
  const every = niceCeil(xMax / 5);
  for (let s = 0; s <= xMax; s += every) label(String(s), box.l + (s / xMax) * box.w, box.t + box.h + 14, 'center');
  label('step', box.l + box.w / 2, box.t + box.h + 28, 'center');
  label('loss', 14, box.t + box.h / 2, 'center', -Math.PI / 2);
  label('accuracy', box.l + box.w + 44, box.t + box.h / 2, 'center', Math.PI / 2);
}

function drawLine(g, xs, ys, color, width, alpha = 1) {
  Object.assign(g, { strokeStyle: color, lineWidth: width, globalAlpha: alpha });
  g.beginPath();
  xs.forEach((px, i) => (i ? g.lineTo(px, ys[i]) : g.moveTo(px, ys[i])));
  g.stroke();
  g.globalAlpha = 1;
}

function drawLegend(g, left, y) {
  const items = [
    [COLORS.loss, `loss (mean of ${SMOOTH_WINDOW} steps)`], [COLORS.acc, 'batch accuracy (same)'],
    [COLORS.test, 'test accuracy'],
  ];
  g.textAlign = 'left';
  for (const [color, text] of items) {
    g.fillStyle = color;
    g.fillRect(left, y - 8, 10, 10);
    g.fillStyle = '#1d232a';
    g.fillText(text, left + 14, y + 1);
    left += g.measureText(text).width + 32;
  }
}

// ---------------------------------------------------------------- classification

const drawCtx = () => $('draw').getContext('2d');
const drawingPixels = () => toModelPixels($('draw'), $('draw').width, $('draw').height);

function clearDrawing() {
  const g = drawCtx();
  g.fillStyle = $('background').value;
  g.fillRect(0, 0, $('draw').width, $('draw').height);
  drawingPixels();
}

// Centre-crops to a square and halves it step by step down to 32x32: one big jump would
// sample only a few source pixels and alias thin strokes away. The result goes to #preview,
// which shows what the model sees, and is returned as RGBA.
function toModelPixels(source, width, height) {
  const side = Math.min(width, height);
  let size = IMAGE;
  while (size * 2 <= side) size *= 2;
  let [cur, crop] = [source, [(width - side) / 2, (height - side) / 2, side, side]];
  for (; size >= IMAGE; size /= 2) {
    const next = Object.assign(document.createElement('canvas'), { width: size, height: size });
    const g = Object.assign(next.getContext('2d'), { imageSmoothingQuality: 'high' });
    g.drawImage(cur, ...crop, 0, 0, size, size);
    [cur, crop] = [next, [0, 0, size, size]];
  }
  const preview = $('preview').getContext('2d', { willReadFrequently: true });
  preview.clearRect(0, 0, IMAGE, IMAGE);
  preview.drawImage(cur, 0, 0);
  return new Uint8Array(preview.getImageData(0, 0, IMAGE, IMAGE).data.buffer);
}

function showPredictions(json) {
  const ranked = (demo.predictions = JSON.parse(json));
  $('predictions').replaceChildren(...ranked.slice(0, 3).map(({ class: name, probability }) => {
    const bar = el('div', null, 'bar');
    bar.append(Object.assign(el('i'), { style: `width: ${pct(probability)}` }));
    const row = el('div', null, 'p');
    row.append(el('div', `${name} — ${pct(probability)}`), bar);
    return row;
  }));
}

function requireModel() {
  if (!demo.model) throw new Error('there is no model yet: start training first');
}

async function classifyDrawing() {
  requireModel();
  const rgba = drawingPixels();
  showPredictions(await onGpu(() => dg.classify_rgba(rgba, IMAGE, IMAGE)));
}

async function classifyFile(file) {
  requireModel();
  const bitmap = await createImageBitmap(file);
  // Also painted onto the drawing canvas (blocky when small), so it can be drawn over.
  const g = drawCtx();
  const side = Math.min(bitmap.width, bitmap.height);
  g.imageSmoothingEnabled = side > IMAGE;
  const { width, height } = $('draw');
  g.drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, width, height);
  g.imageSmoothingEnabled = true;
  const rgba = toModelPixels(bitmap, bitmap.width, bitmap.height);
  if (bitmap.width === IMAGE && bitmap.height === IMAGE && IMAGE_RE.test(file.name)) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    showPredictions(await onGpu(() => dg.classify_file(bytes, file.name)));
  } else {
    showPredictions(await onGpu(() => dg.classify_rgba(rgba, IMAGE, IMAGE)));
  }
}

function setupDrawing() {
  const c = $('draw');
  let last = null;
  const at = (e) => {
    const r = c.getBoundingClientRect();
    return [((e.clientX - r.left) * c.width) / r.width, ((e.clientY - r.top) * c.height) / r.height];
  };
  const stroke = (from, to) => {
    const g = Object.assign(drawCtx(), {
      strokeStyle: $('brush').value, lineWidth: Number($('brush-size').value), lineCap: 'round', lineJoin: 'round',
    });
    g.beginPath();
    g.moveTo(...from);
    g.lineTo(...to);
    g.stroke();
  };
  c.addEventListener('pointerdown', (e) => {
    c.setPointerCapture(e.pointerId);
    stroke((last = at(e)), last);
  });
  c.addEventListener('pointermove', (e) => last && stroke(last, (last = at(e))));
  const end = () => {
    if (!last) return;
    last = null;
    // Classifies as you draw once there is a model; until then only the preview follows.
    if (demo.model) guarded(classifyDrawing)();
    else drawingPixels();
  };
  c.addEventListener('pointerup', end);
  c.addEventListener('pointercancel', end);
  clearDrawing();
}

// ---------------------------------------------------------------- weights and self-test

async function download(exporter, name) {
  requireModel();
  $('weights-status').textContent = `Preparing ${name}…`;
  const bytes = await onGpu(exporter);
  const url = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  const a = Object.assign(document.createElement('a'), { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  // Revoked later: some browsers fetch the URL only after click() has returned.
  setTimeout(() => URL.revokeObjectURL(url), 30000);
  $('weights-status').textContent = `Saved ${name} (${mib(bytes.length)} MiB).`;
}

async function loadWeights(file) {
  requireModel();
  const bytes = new Uint8Array(await file.arrayBuffer());
  const result = JSON.parse(await onGpu(() => dg.load_safetensors(bytes, file.name)));
  $('weights-status').textContent = `Loaded ${result.tensors} tensors from ${file.name}.`;
}

async function selftest() {
  if (typeof dg.run_selftest !== 'function') throw new Error('this build of the wasm package has no self-test');
  $('selftest-summary').textContent = 'Running the kernel checks…';
  const result = (demo.selftest = JSON.parse(await onGpu(() => dg.run_selftest())));
  const passed = result.checks.filter((c) => c.passed).length;
  $('selftest-summary').textContent =
    `${result.passed ? 'All passed' : 'FAILED'}: ${passed} of ${result.checks.length} checks match the CPU reference.`;
  const rows = result.checks.map((c) => ({
    cells: [c.name, c.shape, c.rel_err == null ? 'n/a' : c.rel_err.toExponential(2), {
      textContent: c.passed ? 'pass' : `FAIL${c.detail ? `: ${c.detail}` : ''}`, className: c.passed ? 'pass' : 'fail',
    }],
  }));
  $('selftest-result').replaceChildren(tableOf([['kernel'], ['shape'], ['rel. error'], ['result']], rows));
}

// ---------------------------------------------------------------- wiring and start-up

// Takes the chosen file and resets the input, so choosing the same file again still fires.
function chosenFile(use) {
  return (event) => {
    const file = event.target.files[0];
    event.target.value = '';
    return file ? use(file) : undefined;
  };
}

function wireControls() {
  const on = (id, type, handler) => $(id).addEventListener(type, guarded(handler));
  for (const id of ['depth', 'growth', 'mode', 'kernels', 'batch']) for (const t of ['input', 'change']) on(id, t, onSettingsChanged);
  on('lr', 'input', () => renderModelInfo());
  on('error-close', 'click', () => {
    $('error').hidden = true;
    $('error-text').textContent = '';
  });
  on('start', 'click', start);
  on('pause', 'click', togglePause);
  on('stop', 'click', stop);
  on('evaluate', 'click', evaluate);
  on('profile', 'click', profile);
  on('selftest', 'click', selftest);
  on('use-generated', 'click', useGenerated);
  on('clear-data', 'click', clearData);
  on('data-files', 'change', onDataInput);
  on('data-bin', 'change', onDataInput);
  on('download-onnx', 'click', () => download(() => dg.export_onnx(), 'densenet.onnx'));
  on('download-weights', 'click', () => download(() => dg.export_safetensors(), 'densenet.safetensors'));
  on('load-weights', 'change', chosenFile(loadWeights));
  on('classify-drawing', 'click', classifyDrawing);
  on('classify-file', 'change', chosenFile(classifyFile));
  on('clear-drawing', 'click', clearDrawing);
  on('resume-checkpoint', 'click', resumeCheckpoint);
  on('discard-checkpoint', 'click', discardCheckpoint);
  // For the harness: files as a drop hands them over, [{file, path}]. It may pass File-like
  // objects ({name, size, arrayBuffer}) where a real multi-GB File would take minutes to make.
  demo.addFiles = guarded(loadFiles);
  // A file dropped outside a drop zone would make the browser navigate away from the page.
  for (const type of ['dragover', 'drop']) window.addEventListener(type, (e) => e.preventDefault());
  const zones = { 'data-drop': onDataDrop, draw: (e) => e.dataTransfer.files[0] && classifyFile(e.dataTransfer.files[0]) };
  for (const [id, onDrop] of Object.entries(zones)) {
    $(id).addEventListener('dragover', (e) => e.preventDefault() ?? $(id).classList.add('over'));
    $(id).addEventListener('dragleave', () => $(id).classList.remove('over'));
    // Drop handlers read the DataTransfer synchronously, before guarded() awaits anything.
    $(id).addEventListener('drop', (e) => {
      e.preventDefault();
      $(id).classList.remove('over');
      guarded(() => onDrop(e))();
    });
  }
  window.addEventListener('resize', scheduleChart);
}

async function main() {
  wireControls();
  setupDrawing();
  renderStats();
  renderModelInfo();
  drawChart();
  updateControls();
  try {
    // Imported here rather than statically, so a missing package is reported on the page.
    const module = await import('./pkg/densegpu_web.js');
    await module.default();
    dg = demo.api = module;
  } catch (e) {
    return fatal(`Could not load the wasm package ./pkg/densegpu_web.js (${e.message}). ` +
      'Build it with `cargo xtask web --build-only`.');
  }
  useGenerated();
  if (!navigator.gpu) return fatal(NO_WEBGPU);
  $('adapter').textContent = 'Opening the WebGPU adapter…';
  try {
    const info = JSON.parse(await dg.init_gpu());
    demo.adapter = typeof info.adapter === 'string' ? info.adapter : JSON.stringify(info.adapter);
    demo.kernels = info.kernels;
    demo.bindingLimit = info.max_binding_bytes;
    showAdapter();
  } catch (e) {
    return fatal(`WebGPU could not start: ${e.message}`);
  }
  refreshPlans(); // again, now with the device's own binding limit
  await offerResume().catch(reportError);
  setStatus('ready');
}

main().catch((e) => fatal(e.message ?? String(e)));
