// Preloaded into the Portkey gateway by bench/gateway.py (node --import): its
// start-server.js listens on every address; this binds a listen() without a host to
// 127.0.0.1 instead, so the benchmark opens nothing beyond loopback.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args.length === 1 || args[1] == null || typeof args[1] === "function")) {
    if (args[1] == null && args.length > 1)
      args[1] = "127.0.0.1";
    else
      args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
