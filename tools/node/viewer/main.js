// neroic's model viewer: the exported model at every detail level, relit by any photo's learned light,
// a built-in environment or an HDR the user drops on the page. Bundled with three.js into one script
// (esbuild, from tools/node/node_modules) that stages/export/viewer.py inlines into viewer.html with the models
// (base64 GLBs) and the lights, so the page works offline from a double-click.
//
// Learned lights are order-2 SH of linear radiance in the basis order and constants of docs/method.md,
// which are exactly three.js's SphericalHarmonics3 (same order, same Y_lm constants); three's
// LightProbe shader turns radiance coefficients into irradiance with the cosine-lobe factors
// (pi, 2pi/3, pi/4 folded into 0.886227, 1.023328, 0.858086 and 0.247708), and its indirect diffuse is
// albedo / pi * E: the material stage's diffuse term. The probe has no specular, so the same SH radiance
// is also drawn into a small equirectangular environment whose prefiltered (PMREM) reflections give the
// lobe; its own diffuse contribution is switched off (NEROIC_PROBE_DIFFUSE) so the probe alone gives E.
//
// Query parameters (for automation; the UI does the same): level=NAME, light=INDEX|room|sky|white,
// yaw=DEG, pitch=DEG, w=PX, h=PX (a fixed canvas size), turntable=1, ui=0 (no panel), report=1 (POST "ready" or
// "error: ..." to /__status once drawn, as tools/node/screenshot.html does for the screenshot harness).
import * as THREE from 'three';
import { GLTFLoader } from 'three/addons/loaders/GLTFLoader.js';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';
import { RoomEnvironment } from 'three/addons/environments/RoomEnvironment.js';
import { HDRLoader } from 'three/addons/loaders/HDRLoader.js';
import { EXRLoader } from 'three/addons/loaders/EXRLoader.js';

const data = JSON.parse(document.getElementById('neroic-data').textContent);
const params = new URLSearchParams(location.search);
const fixedSize = params.has('w') && params.has('h');
const reporting = params.get('report') === '1';
if (params.get('ui') === '0') document.getElementById('panel').style.display = 'none';

// Built-in SH lights (linear radiance, [9][3]): a bright sky over a dark ground, and uniform white.
const Y00 = 0.282095, Y1 = 0.488603;
const ZERO = [0, 0, 0];
const BUILT_IN_SH = {  // sky: radiance 0.85 straight up, 0.3 straight down, a little blue
  sky: [[0.55 / Y00, 0.575 / Y00, 0.625 / Y00], [0.275 / Y1, 0.3 / Y1, 0.35 / Y1], ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, ZERO],
  white: [[0.8 / Y00, 0.8 / Y00, 0.8 / Y00], ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, ZERO],
};

const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(fixedSize ? 1 : window.devicePixelRatio);
renderer.outputColorSpace = THREE.SRGBColorSpace;
document.getElementById('view').appendChild(renderer.domElement);
const scene = new THREE.Scene();
const camera = new THREE.PerspectiveCamera(35, 1, 0.01, 100);
const controls = new OrbitControls(camera, renderer.domElement);
controls.enableDamping = false;
controls.autoRotateSpeed = 4.0;
const pmrem = new THREE.PMREMGenerator(renderer);
const probe = new THREE.LightProbe();
scene.add(probe);
let model = null;
let lightMode = 'probe';
const status = document.getElementById('status');

function report(message) {
  document.title = message;
  if (reporting) fetch('/__status', { method: 'POST', body: message });
}
function fail(message) {
  status.textContent = 'error: ' + message;
  report('error: ' + message);
}

function resize() {
  const w = fixedSize ? Number(params.get('w')) : window.innerWidth;
  const h = fixedSize ? Number(params.get('h')) : window.innerHeight;
  renderer.setSize(w, h);
  camera.aspect = w / h;
  camera.updateProjectionMatrix();
  render();
}

function render() {
  renderer.render(scene, camera);
}

// --- lights -------------------------------------------------------------------------------------

function shRadiance(sh, x, y, z) {
  const basis = [Y00, Y1 * y, Y1 * z, Y1 * x, 1.092548 * x * y, 1.092548 * y * z, 0.315392 * (3 * z * z - 1),
    1.092548 * x * z, 0.546274 * (x * x - y * y)];
  const out = [0, 0, 0];
  for (let i = 0; i < 9; i++) for (let c = 0; c < 3; c++) out[c] += basis[i] * sh[i][c];
  return out.map((v) => Math.max(v, 0));
}

// The SH radiance as an equirectangular image in three.js's layout (u = atan2(z, x) / 2pi + 1/2,
// v = asin(y) / pi + 1/2, row 0 at v = 0 since a DataTexture is not flipped).
function shEnvironment(sh) {
  const w = 128, h = 64;
  const pixels = new Float32Array(w * h * 4);
  for (let row = 0; row < h; row++) {
    const lat = ((row + 0.5) / h - 0.5) * Math.PI;
    for (let col = 0; col < w; col++) {
      const lon = ((col + 0.5) / w - 0.5) * 2 * Math.PI;
      const [r, g, b] = shRadiance(sh, Math.cos(lat) * Math.cos(lon), Math.sin(lat), Math.cos(lat) * Math.sin(lon));
      pixels.set([r, g, b, 1], (row * w + col) * 4);
    }
  }
  const texture = new THREE.DataTexture(pixels, w, h, THREE.RGBAFormat, THREE.FloatType);
  texture.mapping = THREE.EquirectangularReflectionMapping;
  texture.magFilter = texture.minFilter = THREE.LinearFilter;
  texture.needsUpdate = true;
  return texture;
}

let environment = null;
function setEnvironment(equirect, background, mode) {
  if (environment) environment.dispose();
  environment = equirect ? pmrem.fromEquirectangular(equirect).texture : null;
  scene.environment = environment;
  scene.background = background;
  scene.backgroundBlurriness = mode === 'probe' ? 0.0 : 0.4;
  lightMode = mode;
  applyLightMode();
  render();
}

function useSh(sh) {
  probe.sh.fromArray(sh.flat());
  probe.intensity = 1;
  const equirect = shEnvironment(sh);
  renderer.toneMapping = THREE.NoToneMapping;  // linear radiance, as the material stage renders it
  setEnvironment(equirect, equirect, 'probe');
}

function useEnvironmentMap(texture) {
  probe.intensity = 0;
  renderer.toneMapping = THREE.NeutralToneMapping;
  setEnvironment(texture, texture, 'environment');
}

function useRoom() {
  probe.intensity = 0;
  renderer.toneMapping = THREE.NeutralToneMapping;
  if (environment) environment.dispose();
  environment = pmrem.fromScene(new RoomEnvironment(), 0.04).texture;
  scene.environment = environment;
  scene.background = new THREE.Color(0xdddddd);
  lightMode = 'environment';
  applyLightMode();
  render();
}

// With a learned light the probe gives the diffuse term; the environment map only the reflections.
const PATCHED_LINE = 'iblIrradiance += getIBLIrradiance( geometryNormal );';
function applyLightMode() {
  if (!model) return;
  model.traverse((object) => {
    if (!object.isMesh) return;
    const material = object.material;
    if (!material.userData.neroicPatched) {
      material.onBeforeCompile = (shader) => {
        const chunk = THREE.ShaderChunk.lights_fragment_maps;
        if (!chunk.includes(PATCHED_LINE)) throw new Error('three.js changed lights_fragment_maps; update viewer/main.js');
        shader.fragmentShader = shader.fragmentShader.replace('#include <lights_fragment_maps>',
          chunk.replace(PATCHED_LINE, `#ifndef NEROIC_PROBE_DIFFUSE\n${PATCHED_LINE}\n#endif`));
      };
      material.customProgramCacheKey = () => (material.defines && 'NEROIC_PROBE_DIFFUSE' in material.defines ? 'probe' : 'env');
      material.userData.neroicPatched = true;
    }
    material.defines = material.defines || {};
    if (lightMode === 'probe') material.defines.NEROIC_PROBE_DIFFUSE = '';
    else delete material.defines.NEROIC_PROBE_DIFFUSE;
    material.needsUpdate = true;
  });
}

function chooseLight(value) {
  if (value === 'room') useRoom();
  else if (value in BUILT_IN_SH) useSh(BUILT_IN_SH[value]);
  else useSh(data.lights[Number(value)].sh);
}

// --- models -------------------------------------------------------------------------------------

function glbBytes(id) {
  const text = document.getElementById(id).textContent.trim();
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

let framed = false;
function frameCamera(object) {
  const box = new THREE.Box3().setFromObject(object);
  const centre = box.getCenter(new THREE.Vector3());
  const radius = box.getSize(new THREE.Vector3()).length() / 2;
  const yaw = THREE.MathUtils.degToRad(Number(params.get('yaw') ?? data.view.yaw));
  const pitch = THREE.MathUtils.degToRad(Number(params.get('pitch') ?? data.view.pitch));
  const distance = radius / Math.sin(THREE.MathUtils.degToRad(35) / 2) * 0.9;
  const dir = new THREE.Vector3(Math.sin(yaw) * Math.cos(pitch), Math.sin(pitch), Math.cos(yaw) * Math.cos(pitch));
  camera.position.copy(centre).addScaledVector(dir, distance);
  camera.near = radius / 100;
  camera.far = radius * 100;
  camera.updateProjectionMatrix();
  controls.target.copy(centre);
  controls.update();
}

function loadLevel(name) {
  const level = data.levels.find((l) => l.name === name);
  return new Promise((resolve, reject) => {
    new GLTFLoader().parse(glbBytes(level.element), '', (gltf) => {
      if (model) scene.remove(model);
      model = gltf.scene;
      scene.add(model);
      if (!framed) { frameCamera(model); framed = true; }
      applyLightMode();
      info.textContent = `${level.triangles.toLocaleString()} triangles, ${(level.bytes / 1e6).toFixed(1)} MB`;
      render();
      resolve();
    }, (err) => reject(err));
  });
}

// --- measuring (for export.scale_points) ---------------------------------------------------------

const picked = [];
const raycaster = new THREE.Raycaster();
function worldPoint(p) {  // model frame -> the pipeline's world frame (export.json model_from_world)
  const m = data.model_from_world;
  const s = m[0][0];
  return [0, 1, 2].map((i) => (p.getComponent(i) - m[i][3]) / s);
}
function measureClick(event) {
  if (!measuring.checked || !model) return;
  const rect = renderer.domElement.getBoundingClientRect();
  const ndc = new THREE.Vector2(((event.clientX - rect.left) / rect.width) * 2 - 1, -((event.clientY - rect.top) / rect.height) * 2 + 1);
  raycaster.setFromCamera(ndc, camera);
  const hit = raycaster.intersectObject(model, true)[0];
  if (!hit) return;
  picked.push(hit.point.clone());
  if (picked.length > 2) picked.shift();
  if (picked.length === 2) {
    const length = picked[0].distanceTo(picked[1]);
    const w = picked.map(worldPoint).map((p) => `[${p.map((v) => v.toFixed(4)).join(', ')}]`);
    measureOut.textContent = `distance ${length.toPrecision(4)} model units. To make it L metres: ` +
      `--set "export.scale_points=[${w.join(', ')}]" --set export.scale_length=L`;
  } else {
    measureOut.textContent = 'now click the second point';
  }
}

// --- user interface -----------------------------------------------------------------------------

const levelSelect = document.getElementById('level');
const lightSelect = document.getElementById('light');
const turntable = document.getElementById('turntable');
const info = document.getElementById('info');
const measuring = document.getElementById('measure');
const measureOut = document.getElementById('measure-out');

for (const level of data.levels) levelSelect.add(new Option(`${level.name} (${level.triangles.toLocaleString()} triangles)`, level.name));
data.lights.forEach((light, i) => lightSelect.add(new Option(`learned light of ${light.name}`, String(i))));
lightSelect.add(new Option('built-in: room (three.js RoomEnvironment)', 'room'));
lightSelect.add(new Option('built-in: sky over dark ground', 'sky'));
lightSelect.add(new Option('built-in: uniform white', 'white'));

levelSelect.onchange = () => loadLevel(levelSelect.value).catch((e) => fail(String(e)));
lightSelect.onchange = () => chooseLight(lightSelect.value);
function animate() {
  if (!controls.autoRotate) return;
  controls.update();
  render();
  requestAnimationFrame(animate);
}
turntable.onclick = () => {
  controls.autoRotate = !controls.autoRotate;
  turntable.textContent = controls.autoRotate ? 'stop turntable' : 'turntable';
  animate();
};
controls.addEventListener('change', render);
renderer.domElement.addEventListener('click', measureClick);
window.addEventListener('resize', resize);

// An HDR or EXR environment dropped anywhere on the page lights the model.
window.addEventListener('dragover', (e) => e.preventDefault());
window.addEventListener('drop', (e) => {
  e.preventDefault();
  const file = e.dataTransfer.files[0];
  if (!file) return;
  const loader = /\.exr$/i.test(file.name) ? new EXRLoader() : new HDRLoader();
  const url = URL.createObjectURL(file);
  loader.load(url, (texture) => {
    texture.mapping = THREE.EquirectangularReflectionMapping;
    useEnvironmentMap(texture);
    lightSelect.add(new Option(`dropped: ${file.name}`, 'dropped'));
    lightSelect.value = 'dropped';
    URL.revokeObjectURL(url);
  }, undefined, () => fail(`cannot read ${file.name} as an HDR (.hdr) or OpenEXR (.exr) image`));
});

const startLevel = params.get('level') ?? data.default_level;
const startLight = params.get('light') ?? (data.lights.length ? '0' : 'room');
levelSelect.value = startLevel;
lightSelect.value = startLight;
resize();
chooseLight(startLight);
loadLevel(startLevel).then(() => {
  if (params.get('turntable') === '1') turntable.onclick();
  render();
  requestAnimationFrame(() => report('ready'));
}).catch((e) => fail(String(e && e.message || e)));
