// mlx-server's chat page: plain JavaScript, no build step, nothing from another origin.
// It talks only to this server's /v1 API. Model text and tool results become text nodes
// (textContent, append(string)), never HTML; the page's Content-Security-Policy forbids inline
// script besides.
'use strict';

const STORE = {conversations: 'mlx-server.conversations', current: 'mlx-server.current',
               settings: 'mlx-server.settings', key: 'mlx-server.api-key'};
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// -- Markdown, safely: block structure by lines, inline spans by one regular expression; every
// piece of model text enters the page through a text node.

const INLINE = /`([^`\n]+)`|\*\*([^*\n]+?)\*\*|\*([^*\s][^*\n]*?)\*|\[([^\]\n]+)\]\(([^)\s]+)\)/g;

function inline(parent, text) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    parent.append(text.slice(last, match.index));
    const [whole, code, strong, em, label, url] = match;
    if (code !== undefined) parent.append(el('code', '', code));
    else if (strong !== undefined) inline(parent.appendChild(el('strong')), strong);
    else if (em !== undefined) inline(parent.appendChild(el('em')), em);
    else if (/^https?:\/\//i.test(url)) {
      const link = parent.appendChild(el('a', '', label));
      link.href = url;
      link.rel = 'noopener noreferrer nofollow';
      link.target = '_blank';
    } else parent.append(whole);  // another scheme (javascript:, data:): shown as written
    last = match.index + whole.length;
  }
  parent.append(text.slice(last));
}

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([^`\s]*)\s*$/;
const LIST_ITEM = /^\s{0,3}([-*+]|\d{1,9}[.)])\s+(.*)$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;

function markdown(text) {
  const root = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, '\n').split('\n');
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let match;
    if ((match = FENCE.exec(line))) {  // a code block keeps every character; unclosed: to the end
      const closer = match[1];
      const body = [];
      for (i += 1; i < lines.length && !(lines[i].trim().startsWith(closer[0].repeat(closer.length))
                                          && lines[i].trim().replace(/[`~]/g, '') === ''); i += 1) {
        body.push(lines[i]);
      }
      i += 1;
      const pre = root.appendChild(el('pre'));
      const code = pre.appendChild(el('code', '', body.join('\n')));
      if (match[2]) code.dataset.lang = match[2];
    } else if (!line.trim()) {
      i += 1;
    } else if ((match = HEADING.exec(line))) {
      inline(root.appendChild(el('h' + Math.min(6, match[1].length + 2))), match[2]);
      i += 1;
    } else if (RULE.test(line)) {
      root.appendChild(el('hr'));
      i += 1;
    } else if (/^\s{0,3}>/.test(line)) {
      const quoted = [];
      for (; i < lines.length && /^\s{0,3}>/.test(lines[i]); i += 1) {
        quoted.push(lines[i].replace(/^\s{0,3}>\s?/, ''));
      }
      root.appendChild(el('blockquote')).appendChild(markdown(quoted.join('\n')));
    } else if ((match = LIST_ITEM.exec(line))) {
      const ordered = /\d/.test(match[1]);
      const list = root.appendChild(el(ordered ? 'ol' : 'ul'));
      if (ordered && parseInt(match[1], 10) !== 1) list.start = parseInt(match[1], 10);
      let item = null;
      for (; i < lines.length; i += 1) {
        const next = LIST_ITEM.exec(lines[i]);
        if (next && /\d/.test(next[1]) === ordered) {
          item = list.appendChild(el('li'));
          inline(item, next[2]);
        } else if (lines[i].trim() && /^\s+/.test(lines[i]) && !FENCE.test(lines[i])) {
          item.append('\n');
          inline(item, lines[i].trim());
        } else break;
      }
    } else {
      const paragraph = [];
      for (; i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i])
             && !/^\s{0,3}>/.test(lines[i]) && !(paragraph.length && LIST_ITEM.test(lines[i])); i += 1) {
        paragraph.push(lines[i]);
      }
      inline(root.appendChild(el('p')), paragraph.join('\n'));
    }
  }
  return root;
}

// -- storage: conversations and settings live in this browser's localStorage

function load(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value === null ? fallback : value;
  } catch {
    return fallback;
  }
}

function save() {
  try {
    localStorage.setItem(STORE.conversations, JSON.stringify(state.conversations));
    localStorage.setItem(STORE.current, JSON.stringify(state.current));
    localStorage.setItem(STORE.settings, JSON.stringify(settings()));
  } catch (error) {  // QuotaExceededError: images take room
    notice('This conversation could not be saved in the browser (' + error.name + '): '
           + 'delete older chats, or use smaller images.');
  }
}

const state = {
  conversations: load(STORE.conversations, []),
  current: load(STORE.current, null),
  attachments: [],      // data: URIs waiting for the next message
  models: [],
  controller: null,     // the AbortController of the request in flight
  live: null,           // the assistant message being streamed, and its node
};

function conversation() {
  let found = state.conversations.find((c) => c.id === state.current);
  if (!found) {
    found = {id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: 'New chat',
             messages: []};
    state.conversations.unshift(found);
    state.current = found.id;
  }
  return found;
}

// -- settings

function settings() {
  return {system: $('system-prompt').value, temperature: $('temperature').value,
          maxTokens: $('max-tokens').value, tools: $('tools').value, model: $('model').value};
}

function restoreSettings() {
  const saved = load(STORE.settings, {});
  $('system-prompt').value = saved.system || '';
  $('temperature').value = saved.temperature || '';
  $('max-tokens').value = saved.maxTokens || '';
  $('tools').value = saved.tools || '';
  state.savedModel = saved.model || '';
  $('api-key').value = localStorage.getItem(STORE.key) || '';
}

function tools() {
  const text = $('tools').value.trim();
  $('tools-error').hidden = true;
  if (!text) return null;
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    $('tools-error').textContent = 'Tools are not valid JSON: ' + error.message;
    $('tools-error').hidden = false;
    openSettings(true);
    throw new PageError('The tools are not valid JSON (see Settings).');
  }
  const list = Array.isArray(parsed) ? parsed : [parsed];
  return list.map((tool) => (tool && tool.type ? tool : {type: 'function', function: tool}));
}

function headers() {
  const key = $('api-key').value.trim();
  const sent = {'Content-Type': 'application/json'};
  if (key) sent.Authorization = 'Bearer ' + key;
  return sent;
}

function openSettings(open) {
  $('settings').hidden = !open;
  $('toggle-settings').setAttribute('aria-expanded', String(open));
}

function notice(text) {
  $('notice').textContent = text || '';
  $('notice').hidden = !text;
}

// -- the server

class PageError extends Error {}

async function serverError(response) {
  let message = response.statusText || 'no message';
  let code = null;
  try {
    const body = await response.json();
    const error = body.error || {};
    message = error.message || message;
    code = error.code || error.type || null;
  } catch { /* not JSON: the status says it */ }
  let text = 'Error ' + response.status + (code ? ' (' + code + ')' : '') + ': ' + message;
  const retry = response.headers.get('Retry-After');
  if (retry) text += ' Retry after ' + retry + ' s.';
  if (response.status === 401) {
    text += ' Enter the server\'s API key under Settings.';
    openSettings(true);
  }
  return new PageError(text);
}

async function loadModels() {
  let response;
  try {
    response = await fetch('/v1/models', {headers: headers()});
  } catch (error) {
    notice('The server cannot be reached: ' + error.message);
    return;
  }
  if (!response.ok) {
    notice((await serverError(response)).message);
    if (response.status === 401) $('api-key').focus();
    return;
  }
  notice('');
  const listing = await response.json();
  state.models = listing.data || [];
  const select = $('model');
  const chosen = select.value || state.savedModel;
  select.replaceChildren();
  for (const model of state.models) {
    const aliases = (model.aliases || []).join(', ');
    const option = el('option', '', (model.loaded ? '● ' : '') + model.id + (aliases ? ' (' + aliases + ')' : '')
                                    + (model.loaded ? ' — loaded' : ''));
    option.value = model.id;
    select.appendChild(option);
  }
  const loaded = state.models.find((m) => m.loaded);
  const keep = state.models.find((m) => m.id === chosen) || loaded || state.models[0];
  if (keep) select.value = keep.id;
}

function apiMessages(messages) {
  const sent = [];
  const system = $('system-prompt').value.trim();
  if (system) sent.push({role: 'system', content: system});
  for (const message of messages) {
    if (message.role === 'user') {
      const images = message.images || [];
      sent.push({role: 'user', content: images.length
        ? [{type: 'text', text: message.content},
           ...images.map((url) => ({type: 'image_url', image_url: {url}}))]
        : message.content});
    } else if (message.role === 'assistant') {
      const calls = message.tool_calls || [];
      if (!message.content && !calls.length) continue;  // stopped before a word
      sent.push(calls.length ? {role: 'assistant', content: message.content || null, tool_calls: calls}
                             : {role: 'assistant', content: message.content});
    } else if (message.role === 'tool') {
      sent.push({role: 'tool', tool_call_id: message.tool_call_id, content: message.content});
    }
  }
  return sent;
}

async function* serverSentData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n?/g, '\n');
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split('\n').filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
      if (data) yield data;
    }
  }
}

async function generate() {
  const chat = conversation();
  chat.error = null;
  let body;
  try {
    body = {model: $('model').value, messages: apiMessages(chat.messages), stream: true,
            stream_options: {include_usage: true}};
    const offered = tools();
    if (offered) body.tools = offered;
  } catch (error) {
    chat.error = error.message;
    renderMessages();
    return;
  }
  if (!body.model) {
    chat.error = 'No model to ask: the model list did not load (see the note above).';
    renderMessages();
    return;
  }
  const temperature = parseFloat($('temperature').value);
  const maxTokens = parseInt($('max-tokens').value, 10);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  if (!Number.isNaN(maxTokens)) body.max_tokens = maxTokens;

  const answer = {role: 'assistant', content: '', model: body.model};
  chat.messages.push(answer);
  state.controller = new AbortController();
  setBusy(true);
  renderMessages();
  const started = performance.now();
  let first = null;
  let usage = null;
  try {
    const response = await fetch('/v1/chat/completions', {
      method: 'POST', headers: headers(), body: JSON.stringify(body), signal: state.controller.signal});
    if (!response.ok) throw await serverError(response);
    for await (const data of serverSentData(response)) {
      if (data === '[DONE]') break;
      const chunk = JSON.parse(data);
      if (chunk.error) {
        throw new PageError('Error' + (chunk.error.code ? ' (' + chunk.error.code + ')' : '') + ': '
                            + chunk.error.message);
      }
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || {};
        if (delta.content || delta.reasoning_content || delta.tool_calls) first = first ?? performance.now();
        if (delta.reasoning_content) answer.reasoning = (answer.reasoning || '') + delta.reasoning_content;
        if (delta.content) answer.content += delta.content;
        for (const part of delta.tool_calls || []) {
          answer.tool_calls = answer.tool_calls || [];
          const call = answer.tool_calls[part.index] = answer.tool_calls[part.index]
            || {id: part.id, type: 'function', function: {name: '', arguments: ''}};
          if (part.id) call.id = part.id;
          if (part.function && part.function.name) call.function.name += part.function.name;
          if (part.function && part.function.arguments) call.function.arguments += part.function.arguments;
        }
        if (choice.finish_reason) answer.finish_reason = choice.finish_reason;
      }
      renderLive();
    }
  } catch (error) {
    if (error.name === 'AbortError') answer.stopped = true;
    else chat.error = error instanceof PageError ? error.message : 'The request failed: ' + error.message;
  } finally {
    const ended = performance.now();
    if (first !== null) {
      answer.stats = {ttft: (first - started) / 1000, seconds: (ended - first) / 1000};
      if (usage) {
        answer.stats.prompt = usage.prompt_tokens;
        answer.stats.cached = (usage.prompt_tokens_details || {}).cached_tokens ?? 0;
        answer.stats.completion = usage.completion_tokens;
      }
    }
    if (!answer.content && !answer.tool_calls && !answer.reasoning && !answer.stopped) {
      chat.messages.pop();  // an error before any word: the error says it all
    }
    state.controller = null;
    state.live = null;
    setBusy(false);
    save();
    renderMessages();
    loadModels();  // the loaded model may have changed
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

function setBusy(busy) {
  $('send').hidden = busy;
  $('stop').hidden = !busy;
  document.body.classList.toggle('busy', busy);
}

// -- sending, editing, regenerating, tool results

function send() {
  if (state.controller) return;
  const text = $('input').value;
  if (!text.trim() && !state.attachments.length) return;
  const chat = conversation();
  chat.messages.push({role: 'user', content: text, images: state.attachments});
  if (chat.title === 'New chat') chat.title = (text.trim() || 'Image').slice(0, 40);
  state.attachments = [];
  $('input').value = '';
  renderAttachments();
  renderSidebar();
  generate();
}

function lastIndex(messages, role) {
  for (let i = messages.length - 1; i >= 0; i -= 1) if (messages[i].role === role) return i;
  return -1;
}

function regenerate() {
  const chat = conversation();
  if (state.controller) return;
  if (chat.messages.length && chat.messages[chat.messages.length - 1].role === 'assistant') chat.messages.pop();
  generate();
}

function editLast() {
  const chat = conversation();
  if (state.controller) return;
  const index = lastIndex(chat.messages, 'user');
  if (index < 0) return;
  const [message] = chat.messages.splice(index);
  chat.error = null;
  $('input').value = message.content;
  state.attachments = message.images || [];
  renderAttachments();
  renderMessages();
  save();
  $('input').focus();
}

function sendToolResult(call, text) {
  const chat = conversation();
  chat.messages.push({role: 'tool', tool_call_id: call.id, name: call.function.name, content: text});
  const index = lastIndex(chat.messages, 'assistant');
  const calls = chat.messages[index].tool_calls || [];
  const answered = new Set(chat.messages.slice(index).filter((m) => m.role === 'tool').map((m) => m.tool_call_id));
  save();
  renderMessages();
  if (calls.every((c) => answered.has(c.id))) generate();
}

// -- rendering

function renderSidebar() {
  const list = $('conversations');
  list.replaceChildren();
  for (const chat of state.conversations) {
    const item = list.appendChild(el('li', chat.id === state.current ? 'current' : ''));
    const open = item.appendChild(el('button', 'open', chat.title || 'New chat'));
    open.type = 'button';
    open.addEventListener('click', () => {
      if (state.controller) return;
      state.current = chat.id;
      document.body.classList.remove('sidebar-open');
      save();
      renderAll();
    });
    const remove = item.appendChild(el('button', 'delete', '×'));
    remove.type = 'button';
    remove.title = 'Delete this chat';
    remove.setAttribute('aria-label', 'Delete chat ' + chat.title);
    remove.addEventListener('click', () => {
      if (state.controller && chat.id === state.current) return;
      state.conversations = state.conversations.filter((c) => c !== chat);
      if (state.current === chat.id) state.current = state.conversations.length ? state.conversations[0].id : null;
      save();
      renderAll();
    });
  }
}

function statsLine(stats, stopped) {
  const line = el('div', 'stats');
  const part = (name, label, value) => {
    const span = line.appendChild(el('span', name, label + ' '));
    span.appendChild(el('b', '', value));
  };
  if (stats) {
    part('ttft', 'TTFT', stats.ttft.toFixed(2) + ' s');
    if (stats.completion !== undefined) {
      const rate = stats.completion > 1 && stats.seconds > 0 ? (stats.completion - 1) / stats.seconds : null;
      part('tps', '', rate === null ? '–' : rate.toFixed(1));
      line.lastChild.append(' tok/s');
      part('prompt-tokens', 'prompt', stats.prompt);
      part('cached-tokens', 'cached', stats.cached);
      part('completion-tokens', 'completion', stats.completion);
    }
  }
  if (stopped) line.appendChild(el('span', 'stopped', 'stopped'));
  return line;
}

function toolCard(call, result, pending) {
  const card = el('div', 'tool-call');
  card.dataset.name = call.function.name;
  const head = card.appendChild(el('div', 'tool-head', 'Tool call '));
  head.appendChild(el('code', 'tool-name', call.function.name));
  let args = call.function.arguments;
  try {
    args = JSON.stringify(JSON.parse(args), null, 2);
  } catch { /* shown as sent */ }
  card.appendChild(el('pre', 'tool-args')).appendChild(el('code', '', args));
  if (result) {
    card.appendChild(el('div', 'tool-head', 'Result'));
    card.appendChild(el('pre', 'tool-result')).appendChild(el('code', '', result.content));
  } else if (pending) {
    const input = card.appendChild(el('textarea', 'tool-result-input'));
    input.rows = 2;
    input.placeholder = 'The result of ' + call.function.name + ', sent back as a tool message';
    const button = card.appendChild(el('button', 'tool-result-send', 'Send result'));
    button.type = 'button';
    button.addEventListener('click', () => sendToolResult(call, input.value));
  }
  return card;
}

function messageBody(node, message, results, pending) {
  node.replaceChildren();
  if (message.role === 'user') {
    if (message.content) node.appendChild(el('div', 'text', message.content));
    if (message.images && message.images.length) {
      const row = node.appendChild(el('div', 'thumbs'));
      for (const url of message.images.filter((u) => /^data:image\//.test(u))) {
        const img = row.appendChild(el('img', 'thumb'));
        img.alt = 'attached image';
        img.src = url;
      }
    }
    return;
  }
  if (message.role === 'tool') {  // a result whose call is not shown above it
    node.appendChild(el('pre', 'tool-result')).appendChild(el('code', '', message.content));
    return;
  }
  if (message.reasoning) {
    const details = node.appendChild(el('details', 'reasoning'));
    details.appendChild(el('summary', '', 'Thinking'));
    details.appendChild(el('div', 'markdown')).appendChild(markdown(message.reasoning));
  }
  node.appendChild(el('div', 'markdown')).appendChild(markdown(message.content || ''));
  for (const call of message.tool_calls || []) node.appendChild(toolCard(call, results.get(call.id), pending));
  if (message.stats || message.stopped) node.appendChild(statsLine(message.stats, message.stopped));
}

function renderMessages() {
  const chat = conversation();
  const box = $('messages');
  const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  box.replaceChildren();
  const results = new Map(chat.messages.filter((m) => m.role === 'tool').map((m) => [m.tool_call_id, m]));
  const calls = new Set(chat.messages.flatMap((m) => (m.tool_calls || []).map((c) => c.id)));
  const lastUser = lastIndex(chat.messages, 'user');
  const lastAssistant = lastIndex(chat.messages, 'assistant');
  const last = chat.messages.length - 1;
  // the calls of the last answer wait for results until every message after it is one
  const awaiting = !state.controller && chat.messages.slice(lastAssistant + 1).every((m) => m.role === 'tool');
  chat.messages.forEach((message, index) => {
    if (message.role === 'tool' && calls.has(message.tool_call_id)) return;  // shown in its card
    const node = box.appendChild(el('div', 'message ' + message.role));
    node.appendChild(el('div', 'role', message.role === 'assistant' && message.model
      ? 'assistant · ' + message.model : message.role));
    const body = node.appendChild(el('div', 'body'));
    messageBody(body, message, results, index === lastAssistant && awaiting);
    if (state.controller && index === last) state.live = {message, body};
    if (state.controller) return;
    const actions = el('div', 'message-actions');
    if (index === lastUser) {
      const edit = actions.appendChild(el('button', 'edit', 'Edit'));
      edit.type = 'button';
      edit.addEventListener('click', editLast);
    }
    if (index === last && message.role === 'assistant') {
      const again = actions.appendChild(el('button', 'regenerate', 'Regenerate'));
      again.type = 'button';
      again.addEventListener('click', regenerate);
    }
    if (actions.childNodes.length) node.appendChild(actions);
  });
  if (chat.error) {
    const error = box.appendChild(el('div', 'message error-message', chat.error));
    error.setAttribute('role', 'alert');
    if (!state.controller && chat.messages.length && chat.messages[last].role !== 'assistant') {
      const retry = error.appendChild(el('button', 'regenerate', 'Retry'));
      retry.type = 'button';
      retry.addEventListener('click', regenerate);
    }
  }
  if (!chat.messages.length && !chat.error) {
    box.appendChild(el('p', 'empty', 'Ask something. Attach images with the button, by dropping them here '
                                      + 'or by pasting; offer tools under Settings.'));
  }
  if (stick) box.scrollTop = box.scrollHeight;
}

let frame = 0;
function renderLive() {  // at most once a frame while tokens stream
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    if (!state.live) return;
    const box = $('messages');
    const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    messageBody(state.live.body, state.live.message, new Map(), false);
    if (stick) box.scrollTop = box.scrollHeight;
  });
}

function renderAttachments() {
  const box = $('attachments');
  box.replaceChildren();
  state.attachments.forEach((url, index) => {
    const item = box.appendChild(el('span', 'attachment'));
    const img = item.appendChild(el('img', 'thumb'));
    img.alt = 'image to send';
    img.src = url;
    const remove = item.appendChild(el('button', 'remove', '×'));
    remove.type = 'button';
    remove.setAttribute('aria-label', 'Remove this image');
    remove.addEventListener('click', () => {
      state.attachments.splice(index, 1);
      renderAttachments();
    });
  });
}

function renderAll() {
  renderSidebar();
  renderMessages();
}

// -- images: file picker, drag and drop, paste

function attach(files) {
  for (const file of files) {
    if (!file.type.startsWith('image/')) continue;
    const reader = new FileReader();
    reader.addEventListener('load', () => {
      state.attachments.push(reader.result);
      renderAttachments();
    });
    reader.readAsDataURL(file);
  }
}

// -- wiring

function start() {
  restoreSettings();
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    send();
  });
  $('input').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') stop();
  });
  $('stop').addEventListener('click', stop);
  $('new-chat').addEventListener('click', () => {
    if (state.controller) return;
    if (conversation().messages.length) state.current = null;  // an empty chat is reused
    conversation();
    document.body.classList.remove('sidebar-open');
    save();
    renderAll();
    $('input').focus();
  });
  $('settings').addEventListener('submit', (event) => event.preventDefault());
  $('toggle-settings').addEventListener('click', () => openSettings($('settings').hidden));
  $('toggle-sidebar').addEventListener('click', () => document.body.classList.toggle('sidebar-open'));
  $('api-key').addEventListener('change', () => {
    localStorage.setItem(STORE.key, $('api-key').value.trim());
    loadModels();
  });
  for (const id of ['system-prompt', 'temperature', 'max-tokens', 'tools', 'model']) {
    $(id).addEventListener('change', save);
  }
  $('file').addEventListener('change', () => {
    attach($('file').files);
    $('file').value = '';
  });
  $('main').addEventListener('dragover', (event) => {
    event.preventDefault();
    document.body.classList.add('dragging');
  });
  $('main').addEventListener('dragleave', () => document.body.classList.remove('dragging'));
  $('main').addEventListener('drop', (event) => {
    event.preventDefault();
    document.body.classList.remove('dragging');
    attach(event.dataTransfer.files);
  });
  $('input').addEventListener('paste', (event) => {
    const files = [...(event.clipboardData ? event.clipboardData.files : [])];
    if (files.some((f) => f.type.startsWith('image/'))) {
      event.preventDefault();
      attach(files);
    }
  });
  conversation();
  renderAll();
  loadModels();
  $('input').focus();
}

start();
