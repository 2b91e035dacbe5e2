// qcimage gallery: paste a link, see the watermarked QC photos, copy the embed snippet.
// The API key stays in this tab (sessionStorage) and travels only in the X-API-Key header.
"use strict";

const KEY_STORE = "qcimage.apiKey";
const GRID_SIZES = "(min-width: 64rem) 25vw, (min-width: 40rem) 33vw, 50vw";
const EMBED_SIZES = "(max-width: 960px) 100vw, 960px";
const SWIPE_PX = 40;

const $ = (id) => document.getElementById(id);
const state = {images: [], product: null, current: -1, opener: null};

function escapeHtml(text) {
  return text.replace(/&/g, "&amp;").replace(/"/g, "&quot;")
    .replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

// `make demo` prints /gallery#key=…: a fragment never reaches the server. Keep the key
// for this tab, then take it out of the address bar (and so out of history and bookmarks).
function adoptKeyFromFragment() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const key = fragment.get("key");
  if (key) {
    sessionStorage.setItem(KEY_STORE, key);
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
}

function showError(message) {
  const error = $("error");
  error.textContent = message;
  error.hidden = !message;
}

function altText(index) {
  const product = state.product;
  return `QC photo ${index + 1} of ${state.images.length}, ` +
    `${product.storePlatform} item ${product.productId}`;
}

async function lookUp(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  const link = $("link").value.trim();
  showError("");
  if (!key) { showError("Enter your API key."); $("api-key").focus(); return; }
  if (!link) { showError("Paste a store or agent link."); $("link").focus(); return; }
  sessionStorage.setItem(KEY_STORE, key);
  const query = new URLSearchParams({link, width: $("width").value, format: $("format").value});
  $("status").textContent = "Looking the item up…";
  $("show").disabled = true;
  try {
    const response = await fetch(`api/qc-images?${query}`, {
      headers: {"X-API-Key": key, "Accept": "application/json"},
      credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
    });
    const body = await response.json().catch(() => null);
    if (!response.ok || !body || !body.success) {
      $("results").hidden = true;
      $("status").textContent = "";
      showError(body && body.message ? body.message : `The service answered ${response.status}.`);
      return;
    }
    show(body);
  } catch (error) {
    $("status").textContent = "";
    showError("The service could not be reached. Check your connection and try again.");
  } finally {
    $("show").disabled = false;
  }
}

function show(body) {
  state.images = body.images;
  state.product = {productId: body.productId, storePlatform: body.storePlatform};
  const grid = $("grid");
  grid.replaceChildren(...body.images.map((image, index) => {
    const img = document.createElement("img");
    img.src = image.watermarked;
    img.srcset = image.srcset;
    img.sizes = GRID_SIZES;
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = altText(index);
    if (image.width) { img.width = image.width; img.height = image.height; }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "thumb";
    button.setAttribute("aria-label", `Open photo ${index + 1} of ${body.images.length}`);
    button.addEventListener("click", () => openViewer(index, button));
    button.append(img);
    const item = document.createElement("li");
    item.append(button);
    return item;
  }));
  const count = body.totalImages === 1 ? "1 photo" : `${body.totalImages} photos`;
  $("results-title").textContent = `${count} · ${body.storePlatform} item ${body.productId}`;
  $("snippet").value = snippet(body.images);
  $("copied").textContent = "";
  $("status").textContent = `Showing ${count}.`;
  $("results").hidden = false;
}

// The HTML a site embeds: the look-up's signed links exactly, escaped for an attribute.
function snippet(images) {
  return images.map((image, index) => {
    const size = image.width ? ` width="${image.width}" height="${image.height}"` : "";
    return `<img src="${escapeHtml(image.watermarked)}" srcset="${escapeHtml(image.srcset)}"` +
      ` sizes="${EMBED_SIZES}"${size} loading="lazy" decoding="async"` +
      ` alt="${escapeHtml(altText(index))}">`;
  }).join("\n");
}

async function copySnippet() {
  const text = $("snippet").value;
  try {
    await navigator.clipboard.writeText(text);
  } catch (error) {
    // No clipboard permission (or not a secure context): copy the selection instead.
    $("snippet").select();
    if (!document.execCommand("copy")) {
      $("copied").textContent = "Select the text and copy it yourself.";
      return;
    }
  }
  $("copied").textContent = "Copied.";
}

function openViewer(index, opener) {
  state.opener = opener;
  showPhoto(index);
  const viewer = $("viewer");
  if (!viewer.open) viewer.showModal();
  $("close").focus();
}

function showPhoto(index) {
  const count = state.images.length;
  state.current = (index + count) % count;
  const image = state.images[state.current];
  const img = $("viewer-img");
  img.srcset = image.srcset;
  img.src = image.watermarked;
  img.alt = altText(state.current);
  $("viewer-caption").textContent = `Photo ${state.current + 1} of ${count}`;
}

function onViewerKey(event) {
  if (event.key === "ArrowRight") { showPhoto(state.current + 1); event.preventDefault(); }
  if (event.key === "ArrowLeft") { showPhoto(state.current - 1); event.preventDefault(); }
}

function watchSwipes(element) {
  let startX = null;
  element.addEventListener("touchstart", (event) => {
    startX = event.changedTouches[0].clientX;
  }, {passive: true});
  element.addEventListener("touchend", (event) => {
    if (startX === null) return;
    const dx = event.changedTouches[0].clientX - startX;
    startX = null;
    if (Math.abs(dx) >= SWIPE_PX) showPhoto(state.current + (dx < 0 ? 1 : -1));
  });
}

function init() {
  adoptKeyFromFragment();
  $("lookup").addEventListener("submit", lookUp);
  $("copy").addEventListener("click", copySnippet);
  const viewer = $("viewer");
  viewer.addEventListener("keydown", onViewerKey);
  // Escape closes a modal dialog by itself; focus goes back to the photo it showed.
  viewer.addEventListener("close", () => { if (state.opener) state.opener.focus(); });
  $("close").addEventListener("click", () => viewer.close());
  $("prev").addEventListener("click", () => showPhoto(state.current - 1));
  $("next").addEventListener("click", () => showPhoto(state.current + 1));
  watchSwipes(viewer);
}

init();
