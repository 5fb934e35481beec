// SpineXR image viewer: window/level on the original values, zoom/pan, overlays, lesion table.
// Runs as gr.HTML js_on_load (element, props, watch); no network access: the image arrives in the value
// (uint16, zlib, base64) and overlays as data: URLs. Window/level recomputes one lookup pass per animation
// frame at most; zoom and pan only redraw the already windowed bitmap.
(function (element, props, watch) {
  const root = element.querySelector('.sxv');
  if (!root) return;
  const q = (s) => root.querySelector(s);
  const ui = {
    stage: q('.sxv-stage'), canvas: q('.sxv-canvas'), empty: q('.sxv-empty'), note: q('.sxv-note'),
    zin: q('.sxv-zin'), zout: q('.sxv-zout'), reset: q('.sxv-reset'), zoomtxt: q('.sxv-zoomtxt'),
    preset: q('.sxv-preset'), win: q('.sxv-win'), lev: q('.sxv-lev'), winv: q('.sxv-winv'), levv: q('.sxv-levv'),
    inv: q('.sxv-inv'), boxes: q('.sxv-boxes'), cam: q('.sxv-cam'), camsel: q('.sxv-camsel'),
    camop: q('.sxv-camop'), lime: q('.sxv-lime'), limeop: q('.sxv-limeop'), legend: q('.sxv-legend'),
    tbody: q('.sxv-lesions tbody'), table: q('.sxv-lesions'), readout: q('.sxv-readout'),
  };
  const st = {
    key: null, token: 0, img: null, vals: null, base: null, lesions: [], cams: {}, limeImg: null,
    center: 0, width: 1, invert: false, fit: 1, zoom: 1, tx: 0, ty: 0, sel: -1, frame: 0, wlDirty: false,
    drag: null,
  };
  const MINZ = 0.5, MAXZ = 32;
  const dpr = () => window.devicePixelRatio || 1;
  const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(4));

  // ---- decoding -------------------------------------------------------------------------------------
  async function inflate(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
    return new Uint16Array(await new Response(stream).arrayBuffer());
  }

  function loadImage(src) {
    const im = new Image();
    im.onload = () => schedule(false);
    im.src = src;
    return im;
  }

  // ---- window / level -------------------------------------------------------------------------------
  function renderWL() {
    const img = st.img;
    if (!img || !st.vals) return;
    const n = img.maxU + 1, lut = new Uint32Array(n);
    const lo = st.center - st.width / 2, w = Math.max(st.width, 1e-9);
    for (let u = 0; u < n; u++) {
      let y = (img.offset + img.slope * u - lo) / w;
      y = y < 0 ? 0 : y > 1 ? 1 : y;
      if (st.invert) y = 1 - y;
      const g = Math.round(y * 255);
      lut[u] = 0xff000000 | (g << 16) | (g << 8) | g;
    }
    const data = st.baseData, px = new Uint32Array(data.data.buffer), vals = st.vals;
    for (let i = 0; i < vals.length; i++) px[i] = lut[vals[i]];
    st.base.getContext('2d').putImageData(data, 0, 0);
  }

  function setWindow(center, width, fromPreset) {
    const img = st.img;
    if (!img) return;
    st.center = Math.min(Math.max(center, img.min - img.range), img.max + img.range);
    st.width = Math.min(Math.max(width, img.slope), img.range * 2);
    ui.win.value = String(st.width);
    ui.lev.value = String(st.center);
    ui.winv.textContent = fmt(st.width);
    ui.levv.textContent = fmt(st.center);
    if (!fromPreset) ui.preset.value = '';
    schedule(true);
  }

  // ---- view transform -------------------------------------------------------------------------------
  function size() {
    const r = ui.stage.getBoundingClientRect();
    return { w: Math.max(1, r.width), h: Math.max(1, r.height) };
  }

  function fitView() {
    if (!st.img) return;
    const s = size();
    st.fit = Math.min(s.w / st.img.w, s.h / st.img.h);
    st.zoom = 1;
    st.tx = (s.w - st.img.w * st.fit) / 2;
    st.ty = (s.h - st.img.h * st.fit) / 2;
    schedule(false);
  }

  function zoomAt(factor, sx, sy) {
    if (!st.img) return;
    const z = Math.min(Math.max(st.zoom * factor, MINZ), MAXZ);
    const k = z / st.zoom;
    st.tx = sx - (sx - st.tx) * k;
    st.ty = sy - (sy - st.ty) * k;
    st.zoom = z;
    schedule(false);
  }

  function zoomCentre(factor) {
    const s = size();
    zoomAt(factor, s.w / 2, s.h / 2);
  }

  function region() {
    const s = size(), sc = st.fit * st.zoom, img = st.img;
    const kx = img.origW / img.w, ky = img.origH / img.h;
    const x0 = Math.max(0, -st.tx / sc), y0 = Math.max(0, -st.ty / sc);
    const x1 = Math.min(img.w, (s.w - st.tx) / sc), y1 = Math.min(img.h, (s.h - st.ty) / sc);
    return [x0 * kx, y0 * ky, x1 * kx, y1 * ky].map((v) => Math.round(v));
  }

  // ---- drawing --------------------------------------------------------------------------------------
  function schedule(wl) {
    st.wlDirty = st.wlDirty || wl;
    if (st.frame) return;
    st.frame = requestAnimationFrame(() => {
      st.frame = 0;
      if (st.wlDirty) { st.wlDirty = false; renderWL(); }
      draw();
    });
  }

  function draw() {
    const c = ui.canvas, s = size(), r = dpr();
    if (c.width !== Math.round(s.w * r) || c.height !== Math.round(s.h * r)) {
      c.width = Math.round(s.w * r);
      c.height = Math.round(s.h * r);
    }
    const ctx = c.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, c.width, c.height);
    const img = st.img;
    if (!img || !st.base) return;
    const sc = st.fit * st.zoom;
    ctx.setTransform(sc * r, 0, 0, sc * r, st.tx * r, st.ty * r);
    ctx.imageSmoothingEnabled = sc < 2;
    ctx.drawImage(st.base, 0, 0);
    if (ui.lime.checked && st.limeImg && st.limeImg.complete) {
      ctx.globalAlpha = ui.limeop.value / 100;
      ctx.drawImage(st.limeImg, 0, 0, img.w, img.h);
    }
    const cam = st.cams[ui.camsel.value];
    if (ui.cam.checked && cam && cam.complete) {
      ctx.globalAlpha = ui.camop.value / 100;
      ctx.drawImage(cam, 0, 0, img.w, img.h);
    }
    ctx.globalAlpha = 1;
    if (ui.boxes.checked) drawBoxes(ctx, sc * r);
    const reg = region();
    root.dataset.zoom = st.zoom.toFixed(3);
    root.dataset.region = reg.join(',');
    root.dataset.center = String(st.center);
    root.dataset.width = String(st.width);
    root.dataset.selected = String(st.sel);
    ui.zoomtxt.textContent = Math.round(st.zoom * 100) + ' %';
    ui.readout.textContent = 'Showing x ' + reg[0] + '-' + reg[2] + ', y ' + reg[1] + '-' + reg[3] +
      ' of ' + img.origW + ' x ' + img.origH + ' px';
  }

  function drawBoxes(ctx, pxScale) {
    const img = st.img, kx = img.w / img.origW, ky = img.h / img.origH;
    st.lesions.forEach((les, i) => {
      const [x0, y0, x1, y1] = les.box;
      const sel = i === st.sel;
      ctx.lineWidth = (sel ? 4 : 2) / pxScale;
      if (sel) {
        ctx.strokeStyle = '#ffffff';
        ctx.setLineDash([]);
        ctx.strokeRect(x0 * kx - 3 / pxScale, y0 * ky - 3 / pxScale, (x1 - x0) * kx + 6 / pxScale,
          (y1 - y0) * ky + 6 / pxScale);
      }
      ctx.globalAlpha = st.sel >= 0 && !sel ? 0.45 : 1;
      ctx.strokeStyle = les.colour;
      ctx.strokeRect(x0 * kx, y0 * ky, (x1 - x0) * kx, (y1 - y0) * ky);
      ctx.globalAlpha = 1;
    });
  }

  // ---- lesion table ---------------------------------------------------------------------------------
  function select(i) {
    st.sel = i;
    ui.tbody.querySelectorAll('tr').forEach((tr, j) => {
      tr.classList.toggle('sxv-sel', j === i);
      tr.setAttribute('aria-selected', j === i ? 'true' : 'false');
    });
    const les = st.lesions[i], img = st.img;
    if (!les || !img) { schedule(false); return; }
    ui.boxes.checked = true;
    const kx = img.w / img.origW, ky = img.h / img.origH, s = size();
    const [x0, y0, x1, y1] = les.box;
    const bw = Math.max((x1 - x0) * kx, 4), bh = Math.max((y1 - y0) * ky, 4);
    const target = Math.min(s.w / bw, s.h / bh) * 0.45 / st.fit;
    st.zoom = Math.min(Math.max(Math.max(target, st.zoom), 1), MAXZ);
    const sc = st.fit * st.zoom;
    st.tx = s.w / 2 - ((x0 + x1) / 2) * kx * sc;
    st.ty = s.h / 2 - ((y0 + y1) / 2) * ky * sc;
    schedule(false);
  }

  function fillTable(lesions, detectorRan) {
    ui.tbody.textContent = '';
    lesions.forEach((les, i) => {
      const tr = document.createElement('tr');
      tr.tabIndex = 0;
      tr.setAttribute('role', 'button');
      tr.setAttribute('aria-selected', 'false');
      tr.setAttribute('aria-label', 'Centre on ' + les.name + ', confidence ' + les.confidence.toFixed(2));
      const sw = document.createElement('span');
      sw.className = 'sxv-swatch';
      sw.style.background = les.colour;
      const td0 = document.createElement('td');
      td0.append(sw, document.createTextNode(les.name));
      const td1 = document.createElement('td');
      td1.textContent = les.confidence.toFixed(2);
      const td2 = document.createElement('td');
      td2.textContent = les.box.map((v) => Math.round(v)).join(', ');
      tr.append(td0, td1, td2);
      tr.addEventListener('click', () => select(i));
      tr.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(i); }
      });
      ui.tbody.append(tr);
    });
    ui.table.hidden = lesions.length === 0;
    ui.legend.textContent = '';
    const classes = {};
    lesions.forEach((l) => { classes[l.name] = classes[l.name] || { colour: l.colour, n: 0 }; classes[l.name].n++; });
    Object.keys(classes).forEach((name) => {
      const item = document.createElement('span');
      item.className = 'sxv-legend-item';
      const sw = document.createElement('span');
      sw.className = 'sxv-swatch';
      sw.style.background = classes[name].colour;
      item.append(sw, document.createTextNode(name + ' x' + classes[name].n));
      ui.legend.append(item);
    });
    if (!lesions.length) {
      ui.legend.textContent = detectorRan ? 'No lesion above the detector threshold.' : 'Detector not run.';
    }
  }

  // ---- value ----------------------------------------------------------------------------------------
  function setOptions(select, items) {
    const keep = select.value;
    select.textContent = '';
    items.forEach(([value, label]) => {
      const o = document.createElement('option');
      o.value = value;
      o.textContent = label;
      select.append(o);
    });
    if (items.some(([v]) => v === keep)) select.value = keep;
  }

  async function load(v) {
    const token = ++st.token;
    if (!v || typeof v !== 'object') {
      st.key = null; st.img = null; st.vals = null; st.base = null; st.lesions = []; st.cams = {}; st.limeImg = null;
      root.dataset.ready = '0';
      ui.empty.hidden = false;
      ui.note.textContent = '';
      fillTable([], false);
      schedule(false);
      return;
    }
    const same = v.key && v.key === st.key && st.vals;
    if (v.image && !same) {
      const vals = await inflate(v.image.data);
      if (token !== st.token) return;
      const p = v.image;
      st.img = { w: p.w, h: p.h, origW: p.orig_w, origH: p.orig_h, offset: p.offset, slope: p.slope,
        min: p.min, max: p.max, range: Math.max(p.max - p.min, p.slope), maxU: 0, presets: p.presets };
      let m = 0;
      for (let i = 0; i < vals.length; i++) if (vals[i] > m) m = vals[i];
      st.img.maxU = m;
      st.vals = vals;
      st.base = document.createElement('canvas');
      st.base.width = p.w;
      st.base.height = p.h;
      st.baseData = st.base.getContext('2d').createImageData(p.w, p.h);
      st.key = v.key;
      st.sel = -1;
      st.invert = !!p.invert;
      ui.inv.checked = st.invert;
      const step = p.slope === 1 ? 1 : st.img.range / 1000;
      ui.win.min = String(p.slope); ui.win.max = String(st.img.range * 2); ui.win.step = String(step);
      ui.lev.min = String(p.min); ui.lev.max = String(p.max); ui.lev.step = String(step);
      setOptions(ui.preset, [['', 'Custom']].concat(p.presets.map((x, i) => [String(i), x.name])));
      ui.preset.value = '0';
      setWindow(p.presets[0].center, p.presets[0].width, true);
      fitView();
    } else if (!same) {
      st.img = null; st.vals = null; st.base = null; st.key = v.key || null;
    }
    ui.empty.hidden = !!st.img;
    ui.note.textContent = v.note || '';
    st.lesions = v.lesions || [];
    if (st.sel >= st.lesions.length) st.sel = -1;
    fillTable(st.lesions, !!v.detector_ran);
    const cams = v.cams || [];
    st.cams = {};
    cams.forEach((c) => { st.cams[c.id] = loadImage(c.src); });
    setOptions(ui.camsel, cams.map((c) => [c.id, c.name]));
    ui.cam.disabled = ui.camsel.disabled = ui.camop.disabled = cams.length === 0;
    if (!cams.length) ui.cam.checked = false;
    st.limeImg = v.lime ? loadImage(v.lime) : null;
    ui.lime.disabled = ui.limeop.disabled = !v.lime;
    if (!v.lime) ui.lime.checked = false;
    ui.boxes.disabled = st.lesions.length === 0;
    root.dataset.ready = st.img ? '1' : '0';
    root.dataset.key = st.key || '';
    schedule(true);
  }

  // ---- events ---------------------------------------------------------------------------------------
  ui.zin.addEventListener('click', () => zoomCentre(1.25));
  ui.zout.addEventListener('click', () => zoomCentre(1 / 1.25));
  ui.reset.addEventListener('click', () => { fitView(); select(-1); });
  ui.preset.addEventListener('change', () => {
    const p = st.img && st.img.presets[Number(ui.preset.value)];
    if (p && ui.preset.value !== '') setWindow(p.center, p.width, true);
  });
  ui.win.addEventListener('input', () => setWindow(st.center, Number(ui.win.value), false));
  ui.lev.addEventListener('input', () => setWindow(Number(ui.lev.value), st.width, false));
  ui.inv.addEventListener('change', () => { st.invert = ui.inv.checked; schedule(true); });
  [ui.boxes, ui.cam, ui.camsel, ui.lime].forEach((el) => el.addEventListener('change', () => schedule(false)));
  [ui.camop, ui.limeop].forEach((el) => el.addEventListener('input', () => schedule(false)));
  const cv = ui.canvas;
  cv.addEventListener('wheel', (e) => {
    if (!st.img) return;
    e.preventDefault();
    const r = cv.getBoundingClientRect();
    zoomAt(Math.pow(1.0015, -e.deltaY), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  cv.addEventListener('pointerdown', (e) => {
    if (!st.img) return;
    cv.setPointerCapture(e.pointerId);
    st.drag = { x: e.clientX, y: e.clientY, wl: e.shiftKey || e.button === 2, c: st.center, w: st.width };
  });
  cv.addEventListener('pointermove', (e) => {
    const d = st.drag;
    if (!d) return;
    const dx = e.clientX - d.x, dy = e.clientY - d.y;
    if (d.wl) {
      const k = st.img.range / 400;
      setWindow(d.c + dy * k, d.w + dx * k, false);
    } else {
      st.tx += dx; st.ty += dy; d.x = e.clientX; d.y = e.clientY;
      schedule(false);
    }
  });
  const endDrag = () => { st.drag = null; };
  cv.addEventListener('pointerup', endDrag);
  cv.addEventListener('pointercancel', endDrag);
  cv.addEventListener('contextmenu', (e) => e.preventDefault());
  cv.addEventListener('dblclick', () => fitView());
  cv.addEventListener('keydown', (e) => {
    const pan = { ArrowLeft: [40, 0], ArrowRight: [-40, 0], ArrowUp: [0, 40], ArrowDown: [0, -40] }[e.key];
    if (pan) { st.tx += pan[0]; st.ty += pan[1]; schedule(false); }
    else if (e.key === '+' || e.key === '=') zoomCentre(1.25);
    else if (e.key === '-') zoomCentre(1 / 1.25);
    else if (e.key === '0') fitView();
    else return;
    e.preventDefault();
  });
  if (window.ResizeObserver) new ResizeObserver(() => { if (st.img && st.zoom === 1) fitView(); else schedule(false); }).observe(ui.stage);
  element.sxViewer = { state: st, load: load, select: select, setWindow: setWindow, fit: fitView, region: region };
  if (watch) watch('value', () => load(props.value));
  load(props.value);
})(element, props, typeof watch === 'undefined' ? null : watch);
