// Drives the real socket.io-client against a running server, for tests/realtime/test_socketio_client.py.
// argv[2] is a JSON plan: {url, path, transports?, auth?, extraHeaders?, steps: [...], until: [...],
// timeoutMs}. Every happening is printed as one JSON line on stdout; the test reads them as they come.
//   steps: ["emit", event, data, expectedEvent]   emit, wait for expectedEvent (or an error/disconnect)
//          ["ack", event, data]                   emitWithAck, print the ack's payload
//          ["upgrade"]                            wait until the transport is websocket
// After the steps: {"type": "ready"} (and exit if `exitWhenReady`); then wait for one of `until` (or a
// disconnect), print, exit.
import { io } from "socket.io-client";

const plan = JSON.parse(process.argv[2]);
const started = Date.now();
const print = (line) => process.stdout.write(JSON.stringify({ ...line, at: Date.now() }) + "\n");

const socket = io(plan.url, {
  path: plan.path ?? "/backup-ws",
  transports: plan.transports,
  auth: plan.auth,
  extraHeaders: plan.extraHeaders,
  reconnection: false,
  timeout: 10000,
});
const transport = () => socket.io.engine?.transport?.name;
let finished = false;
const finish = (code) => {
  if (finished) return;
  finished = true;
  print({ type: "exit", transport: transport(), ms: Date.now() - started });
  socket.disconnect();
  setTimeout(() => process.exit(code), 50);
};
const timer = setTimeout(() => {
  print({ type: "timeout" });
  finish(2);
}, plan.timeoutMs ?? 60000);
timer.unref();

const waiters = [];
socket.onAny((event, ...args) => {
  print({ type: "event", event, data: args[0] ?? null, transport: transport() });
  for (const waiter of [...waiters]) waiter(event, args[0]);
  if ((plan.until ?? []).includes(event)) finish(0);
});
socket.on("connect_error", (error) => {
  print({ type: "connect_error", message: error.message, data: error.data ?? null });
  finish(0);
});
socket.on("disconnect", (reason) => {
  print({ type: "disconnect", reason });
  finish(0);
});

const next = (expected) =>
  new Promise((resolve) => {
    const waiter = (event, data) => {
      if (event === expected || event === "error") {
        waiters.splice(waiters.indexOf(waiter), 1);
        resolve({ event, data });
      }
    };
    waiters.push(waiter);
  });

socket.io.on("open", () => {
  print({ type: "open", transport: transport() });
  socket.io.engine.on("upgrade", (t) => print({ type: "upgrade", transport: t.name }));
});
socket.on("connect", async () => {
  print({ type: "connect", transport: transport(), id: socket.id });
  for (const step of plan.steps ?? []) {
    const [kind, event, data, expected] = step;
    if (kind === "emit") {
      const answer = next(expected);
      socket.emit(event, data);
      if ((await answer).event === "error") return;
    } else if (kind === "ack") {
      const reply = await socket.timeout(10000).emitWithAck(event, data);
      print({ type: "ack", event, data: reply, transport: transport() });
    } else if (kind === "upgrade") {
      while (transport() !== "websocket") await new Promise((r) => setTimeout(r, 20));
    }
  }
  print({ type: "ready", transport: transport() });
  if (plan.exitWhenReady) finish(0);
});
