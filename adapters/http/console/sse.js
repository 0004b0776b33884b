// A parser of the Server-Sent Events wire format, for streams read with fetch(): the
// console needs it because EventSource cannot send X-API-Key. Loaded before console.js.
"use strict";

// The SSE wire format (WHATWG HTML, "event stream interpretation"): lines end in CRLF, LF
// or CR; a blank line dispatches; "field: value" with one optional space; ":" comments.
class SseParser {
  constructor({ onEvent, onComment, onRetry }) {
    Object.assign(this, { onEvent, onComment, onRetry });
    this.buffer = "";
    this.data = [];
    this.event = "";
    this.lastEventId = null;
  }

  push(chunk) {
    this.buffer += chunk;
    const lines = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = lines.exec(this.buffer)) !== null) {
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break; // may be CR LF
      this.line(this.buffer.slice(start, match.index));
      start = lines.lastIndex;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return this.onComment(line.slice(1).trim());
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.onRetry(Number(value));
  }

  dispatch() {
    const event = { type: this.event || "message", data: this.data.join("\n"), lastEventId: this.lastEventId };
    const hasData = this.data.length > 0;
    this.data = [];
    this.event = "";
    if (hasData) this.onEvent(event);
  }
}
