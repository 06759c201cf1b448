// The posttrain feedback page: chat with one model or two side by side, judge answers, see and
// download what was collected. Plain JavaScript, no dependencies; text is always set with
// textContent, so nothing a model or a person writes is ever read as HTML.
"use strict";

const $ = (selector) => document.querySelector(selector);

// -- who and how ------------------------------------------------------------------
function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// An anonymous id per browser: judgements by one person can be told apart, never who they are.
const userId = localStorage.getItem("posttrain-user") || "web-" + newId().slice(0, 16);
localStorage.setItem("posttrain-user", userId);

// A token given once in the address (?token=T) is kept for this tab and taken out of the address bar.
const params = new URLSearchParams(location.search);
if (params.has("token")) {
  sessionStorage.setItem("posttrain-token", params.get("token"));
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
}
const token = sessionStorage.getItem("posttrain-token");

function status(text, isError = false) {
  const line = $("#status");
  line.textContent = text;
  line.classList.toggle("error", isError);
}

async function api(path, body) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  const options = { headers };
  if (body !== undefined) {
    options.method = "POST";
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = (response.headers.get("content-type") || "").startsWith("application/json") ? await response.json() : await response.blob();
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

async function busy(button, work) {
  button.disabled = true;
  try {
    return await work();
  } catch (error) {
    status(error.message, true);
    return null;
  } finally {
    button.disabled = false;
  }
}

// -- messages and judging ---------------------------------------------------------
function messageElement(role, text, label) {
  const element = document.createElement("div");
  element.className = "message " + role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = label;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  element.append(who, body);
  return element;
}

function judged(element, text) {
  const note = document.createElement("div");
  note.className = "judged";
  note.textContent = text;
  element.append(note);
}

async function sendFeedback(body) {
  // One event id per judgement: a retried request is stored once.
  const payload = { event_id: newId(), user_id: userId, ...body };
  try {
    return await api("/api/feedback", payload);
  } catch (error) {
    if (error instanceof TypeError) return await api("/api/feedback", payload); // network hiccup: retry once
    throw error;
  }
}

// An answer with its buttons: rate up/down, edit into the better answer, flag as unsafe.
// onEdit(text) lets the chat continue from the corrected answer.
function answerElement(answerId, text, label, onEdit) {
  const element = messageElement("assistant", text, label);
  element.dataset.answerId = answerId;
  const actions = document.createElement("div");
  actions.className = "actions";
  const button = (cls, title, handler) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = title;
    b.addEventListener("click", () => busy(b, handler));
    actions.append(b);
  };
  button("rate-up", "👍 Good", async () => {
    const saved = await sendFeedback({ kind: "rating", answer_id: answerId, rating: 1 });
    judged(element, `rated up (#${saved.id})`);
    status("Saved: rated up.");
  });
  button("rate-down", "👎 Bad", async () => {
    const saved = await sendFeedback({ kind: "rating", answer_id: answerId, rating: -1 });
    judged(element, `rated down (#${saved.id})`);
    status("Saved: rated down.");
  });
  button("edit", "✎ Edit", async () => {
    if (element.querySelector(".editor")) return;
    const editor = document.createElement("div");
    editor.className = "editor";
    const area = document.createElement("textarea");
    area.className = "edit-text";
    area.rows = 4;
    area.value = text;
    const save = document.createElement("button");
    save.type = "button";
    save.className = "edit-save";
    save.textContent = "Save the better answer";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "edit-cancel";
    cancel.textContent = "Cancel";
    cancel.addEventListener("click", () => editor.remove());
    save.addEventListener("click", () => busy(save, async () => {
      const saved = await sendFeedback({ kind: "edit", answer_id: answerId, correction: area.value });
      editor.remove();
      const corrected = document.createElement("div");
      corrected.className = "corrected";
      corrected.textContent = area.value;
      element.append(corrected);
      judged(element, `edited (#${saved.id})`);
      status("Saved: your better answer.");
      if (onEdit) onEdit(area.value);
    }));
    editor.append(area, save, cancel);
    element.append(editor);
    area.focus();
  });
  button("flag", "⚠ Unsafe", async () => {
    const saved = await sendFeedback({ kind: "flag", answer_id: answerId, flag: "unsafe" });
    judged(element, `flagged as unsafe (#${saved.id})`);
    status("Saved: flagged as unsafe.");
  });
  element.append(actions);
  return element;
}

function submitOnEnter(area, form) {
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

// -- one model --------------------------------------------------------------------
const chat = { messages: [] };

function newChat() {
  chat.messages = [];
  $("#chat-log").replaceChildren();
}

$("#chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("#chat-input").value;
  if (!text.trim()) return;
  busy($("#chat-send"), async () => {
    const model = $("#model-select").value;
    const messages = [...chat.messages, { role: "user", content: text }];
    $("#chat-log").append(messageElement("user", text, "you"));
    $("#chat-input").value = "";
    status(`${model} is answering…`);
    let reply;
    try {
      reply = await api("/api/chat", { model, messages });
    } catch (error) {
      $("#chat-log").lastElementChild.remove();
      $("#chat-input").value = text;
      throw error;
    }
    const index = messages.length;
    messages.push({ role: "assistant", content: reply.text });
    chat.messages = messages;
    $("#chat-log").append(answerElement(reply.answer_id, reply.text, reply.model, (better) => {
      chat.messages[index] = { role: "assistant", content: better }; // the conversation goes on from the better answer
    }));
    status(reply.dropped ? `The ${reply.dropped} oldest messages were left out to fit the model's context.` : "");
  });
});
$("#chat-new").addEventListener("click", newChat);
$("#model-select").addEventListener("change", () => status(`Now chatting with ${$("#model-select").value}; the conversation goes on.`));
submitOnEnter($("#chat-input"), $("#chat-form"));

// -- two models, anonymous ----------------------------------------------------------
const arena = { battle: null, a: [], b: [], last: null, voted: false };

function newBattle() {
  Object.assign(arena, { battle: null, a: [], b: [], last: null, voted: false });
  $("#arena-log-a").replaceChildren();
  $("#arena-log-b").replaceChildren();
  $("#arena-votes").hidden = true;
  $("#arena-reveal").textContent = "";
}

$("#arena-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("#arena-input").value;
  if (!text.trim()) return;
  busy($("#arena-send"), async () => {
    if (arena.voted) newBattle(); // after a vote the names are known: the next question is a new battle
    const turn = { role: "user", content: text };
    const body = { battle: arena.battle, messages_a: [...arena.a, turn], messages_b: [...arena.b, turn] };
    status("Both models are answering…");
    const reply = await api("/api/arena", body);
    $("#arena-input").value = "";
    arena.battle = reply.battle;
    for (const side of ["a", "b"]) {
      const index = body["messages_" + side].length;
      arena[side] = [...body["messages_" + side], { role: "assistant", content: reply[side].text }];
      const log = $("#arena-log-" + side);
      log.append(messageElement("user", text, "you"));
      log.append(answerElement(reply[side].answer_id, reply[side].text, "Model " + side.toUpperCase(), (better) => {
        arena[side][index] = { role: "assistant", content: better };
      }));
    }
    arena.last = { a: reply.a.answer_id, b: reply.b.answer_id };
    $("#arena-votes").hidden = false;
    status("Which answer is better?");
  });
});

for (const button of document.querySelectorAll("#arena-votes button")) {
  button.addEventListener("click", () => busy(button, async () => {
    const saved = await sendFeedback({ kind: "arena", answer_id: arena.last.a, other_id: arena.last.b, choice: button.dataset.choice });
    arena.voted = true;
    $("#arena-votes").hidden = true;
    $("#arena-reveal").textContent = `Model A was ${saved.models.a}; Model B was ${saved.models.b}.`;
    status(`Saved: your vote (#${saved.id}). The next message starts a new battle.`);
  }));
}
$("#arena-new").addEventListener("click", newBattle);
submitOnEnter($("#arena-input"), $("#arena-form"));

// -- what was collected ----------------------------------------------------------------
async function showCollected() {
  const summary = await api("/api/summary");
  $("#collected-total").textContent = `${summary.total} judgements collected.`;
  const rows = Object.entries(summary.per_model).map(([model, counts]) => {
    const row = document.createElement("tr");
    row.dataset.model = model;
    for (const value of [model, counts.up || 0, counts.down || 0, counts.edit || 0, counts.flag || 0, counts.arena || 0]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    return row;
  });
  $("#collected-counts tbody").replaceChildren(...rows);
  const items = summary.recent.map((item) => {
    const li = document.createElement("li");
    let what = item.kind === "rating" ? (item.rating > 0 ? "rated up" : "rated down") : item.kind;
    if (item.kind === "arena") what = `arena ${item.model} vs ${item.model_b}: ${item.choice}`;
    li.textContent = `${item.created_at.slice(0, 19).replace("T", " ")} · ${what} · ${item.model || ""} · “${item.question.slice(0, 80)}”`;
    return li;
  });
  $("#collected-recent").replaceChildren(...items);
}

$("#collected-refresh").addEventListener("click", () => busy($("#collected-refresh"), showCollected));
$("#export-download").addEventListener("click", () => busy($("#export-download"), async () => {
  const format = $("#export-format").value;
  const blob = await api("/api/export?format=" + encodeURIComponent(format));
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `feedback-${format}.jsonl`;
  document.body.append(link);
  link.click();
  link.remove();
  status(`Downloaded feedback-${format}.jsonl.`);
}));

// -- tabs and start ----------------------------------------------------------------
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll(".tab")) other.setAttribute("aria-pressed", String(other === tab));
    for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== tab.dataset.view;
    if (tab.dataset.view === "collected-view") busy(tab, showCollected);
  });
}

(async () => {
  try {
    const info = await api("/api/info");
    $("#model-select").replaceChildren(...info.models.map((name) => new Option(name, name)));
    $("#tab-arena").hidden = !info.arena;
    document.body.dataset.ready = "true";
    status(`Ready: ${info.models.join(", ")}.`);
  } catch (error) {
    status(error.message, true);
  }
})();
