// Server-sent events read with fetch (EventSource cannot send an Authorization header).
// Reconnects by itself with the last event id, as EventSource would; stops after "end".

import { authHeaders } from "./api.js";

export function follow(path, onEvent, { onState } = {}) {
  let lastId = null;
  let stopped = false;
  let controller = null;
  let retryMs = 3000;

  async function connect() {
    controller = new AbortController();
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const response = await fetch(path, { headers, signal: controller.signal });
    if (!response.ok) {
      if (response.status === 401 || response.status === 403) {
        window.dispatchEvent(new CustomEvent("gradlab:unauthorised"));
      }
      throw new Error(`event stream answered ${response.status}`);
    }
    onState && onState("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { type: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (event.data.length) {
            if (event.id) lastId = event.id;
            onEvent(event.type, JSON.parse(event.data.join("\n")));
            if (event.type === "end") return true;
          }
          event = { type: "message", data: [], id: null };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event.type = val;
          else if (field === "data") event.data.push(val);
          else if (field === "id") event.id = val;
          else if (field === "retry" && /^\d+$/.test(val)) retryMs = Number(val);
        }
      }
    }
  }

  async function loop() {
    while (!stopped) {
      let ended = false;
      try {
        ended = await connect();
      } catch (error) {
        if (stopped) return;
      }
      if (ended || stopped) {
        onState && onState("ended");
        return;
      }
      onState && onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  }

  loop();
  return {
    close() {
      stopped = true;
      if (controller) controller.abort();
    },
  };
}
