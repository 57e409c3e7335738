// The pneumo page: send each chosen or dropped film to POST /explain and show its answer.
// No framework, nothing fetched from elsewhere: it must work on an offline hospital network.
"use strict";

const MODEL_RETRY_MS = 3000; // while the model loads, ask again this often
const MODEL_RETRIES = 100; // ... at most this many times (5 minutes)
const HEATMAP_OPACITY = 0.6; // initial heatmap opacity, as the slider's default value says

const results = document.getElementById("results");
const template = document.getElementById("card");
const tokenRow = document.getElementById("token-row");
const tokenInput = document.getElementById("token");
const refused = []; // [card, file] refused for a missing or wrong token, to retry

function endpoint(path) {
  return new URL(path, document.baseURI).toString();
}

function authHeaders() {
  return tokenInput.value ? { Authorization: `Bearer ${tokenInput.value}` } : {};
}

// What a refusal means, in one plain sentence for the people who read films; the server's own
// message is one click away (Details).
const STATUS_WORDS = {
  400: "This file could not be read as a chest film.",
  401: "The server needs an access token (enter it above).",
  404: "The requested model version is not served.",
  413: "This file is too large for the server.",
  415: "This kind of file is not accepted: send JPEG, PNG or DICOM.",
  422: "This image does not look like a chest film the model knows, so it was not scored.",
  501: "This model cannot show where it looked.",
  503: "The model is not ready yet; try again in a moment.",
};

// A refused request -> {sentence, detail, body}: the plain sentence, the server's message, its JSON.
async function readError(response) {
  let body = {};
  try {
    body = await response.json();
  } catch (_) {
    body = {};
  }
  const detail = typeof body.error === "string" ? body.error : "";
  if (response.status >= 500 && response.status !== 503) {
    return {
      sentence: "The server could not analyse this film. Try again, or tell the people who run it.",
      detail,
      body,
    };
  }
  const sentence = STATUS_WORDS[response.status] || `The server refused this film (HTTP ${response.status}).`;
  return { sentence, detail, body };
}

async function showModel(attempt = 0) {
  const target = document.getElementById("model");
  try {
    const response = await fetch(endpoint("model"), { headers: authHeaders() });
    if (response.ok) {
      const model = await response.json();
      target.textContent = `Model: ${model.name}, version ${model.version} ` +
        `(says PNEUMONIA at P ≥ ${Number(model.decision_threshold).toFixed(2)})`;
      return;
    }
    target.textContent = `Model: ${(await readError(response)).sentence}`;
    if (response.status === 401) tokenRow.hidden = false;
    if (response.status !== 503 || attempt >= MODEL_RETRIES) return;
  } catch (_) {
    target.textContent = "Model: the server cannot be reached.";
    if (attempt >= MODEL_RETRIES) return;
  }
  setTimeout(() => showModel(attempt + 1), MODEL_RETRY_MS);
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

// The film as the browser drew it, else the server's copy (a browser cannot draw DICOM), else a note;
// and a DICOM film's modality, view position and body part when the server read them.
function showFilm(card, body) {
  const film = card.querySelector(".film");
  const drawn = film.complete && film.naturalWidth > 0 && !film.src.startsWith("data:");
  if (!drawn && body.film_png) {
    film.src = `data:image/png;base64,${body.film_png}`;
    film.hidden = false;
  }
  const pictured = drawn || Boolean(body.film_png);
  film.hidden = !pictured;
  card.querySelector(".no-picture").hidden = pictured;
  const dicom = body.dicom || {};
  const facts = [dicom.modality, dicom.view_position, dicom.body_part].filter(Boolean);
  const shown = card.querySelector(".facts");
  shown.textContent = facts.length ? `DICOM ${facts.join(", ")}` : "";
  shown.hidden = facts.length === 0;
}

function setError(card, refusal) {
  const error = card.querySelector(".error");
  error.querySelector(".sentence").textContent = refusal.sentence;
  const details = error.querySelector(".details");
  details.querySelector(".detail").textContent = refusal.detail;
  details.hidden = !refusal.detail;
  details.open = false;
  error.hidden = false;
  card.querySelector(".verdict").textContent = "Not analysed.";
  showFilm(card, refusal.body);
}

function showAnswer(card, answer) {
  const verdict = card.querySelector(".verdict");
  verdict.replaceChildren();
  const p = document.createElement("span");
  p.className = "p";
  p.textContent = `P(pneumonia) ${percent(answer.probability)}`;
  const label = document.createElement("span");
  label.className = `label-${answer.label}`;
  label.textContent = answer.label;
  verdict.append(p, document.createElement("br"), label,
    ` (threshold ${percent(answer.threshold)})`);
  if (answer.in_distribution === false) {
    const ood = card.querySelector(".ood");
    ood.textContent = "Warning: this image does not look like the films the model was trained on; " +
      "its probability may mean little.";
    ood.hidden = false;
  }
  showFilm(card, answer);
  if (!answer.heatmap_png) return; // only controls that do something: no map, no switch or slider
  const heat = card.querySelector(".heat");
  heat.src = `data:image/png;base64,${answer.heatmap_png}`;
  heat.alt = `Heatmap of where the model saw evidence of pneumonia in ${card.dataset.name}`;
  heat.hidden = false;
  const controls = card.querySelector(".controls");
  controls.hidden = false;
  const toggle = controls.querySelector(".toggle");
  const opacity = controls.querySelector(".opacity");
  const apply = () => {
    heat.hidden = !toggle.checked;
    heat.style.opacity = String(opacity.value / 100);
    opacity.disabled = !toggle.checked;
  };
  toggle.addEventListener("change", apply);
  opacity.addEventListener("input", apply);
  apply();
}

async function analyse(card, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  card.querySelector(".error").hidden = true;
  card.querySelector(".verdict").textContent = "Analysing…";
  try {
    const response = await fetch(endpoint("explain"), { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) {
      if (response.status === 401) {
        tokenRow.hidden = false;
        refused.push([card, file]);
      }
      setError(card, await readError(response));
      return;
    }
    showAnswer(card, await response.json());
  } catch (_) {
    setError(card, { sentence: "The server cannot be reached; check the connection and try again.", detail: "", body: {} });
  }
}

function addCard(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.dataset.name = file.name;
  card.querySelector(".name").textContent = file.name;
  const film = card.querySelector(".film");
  film.alt = `Chest film ${file.name}`;
  const url = URL.createObjectURL(file);
  film.addEventListener("error", () => film.removeAttribute("src"), { once: true }); // DICOM: the server's copy
  film.src = url;
  const opacity = card.querySelector(".opacity");
  opacity.value = String(100 * HEATMAP_OPACITY);
  opacity.setAttribute("aria-label", `Heatmap opacity for ${file.name}`);
  card.querySelector(".toggle").setAttribute("aria-label", `Show heatmap for ${file.name}`);
  results.append(card);
  document.getElementById("empty").hidden = true;
  return card;
}

async function analyseAll(files) {
  const cards = Array.from(files).map((file) => [addCard(file), file]);
  for (const [card, file] of cards) await analyse(card, file); // one at a time: the server batches anyway
}

document.getElementById("files").addEventListener("change", (event) => {
  analyseAll(event.target.files);
  event.target.value = "";
});

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  analyseAll(event.dataTransfer.files);
});

document.getElementById("token-retry").addEventListener("click", () => {
  showModel();
  for (const [card, file] of refused.splice(0)) analyse(card, file);
});

showModel();
