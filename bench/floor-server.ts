/**
 * The floor of the fan-out benchmark: a plain `ws` server in one process that relays every text
 * frame to every other client, as the second seed's server.js does with no API Gateway, Lambda or
 * DynamoDB in between. Reports its port, then its CPU time and peak RSS when asked.
 */
import { WebSocketServer } from "ws";

const wss = new WebSocketServer({ port: 0, host: "127.0.0.1", perMessageDeflate: false });
wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => {
    for (const client of wss.clients) if (client !== ws && client.readyState === client.OPEN) client.send(data, { binary: isBinary });
  });
});
wss.on("listening", () => {
  const address = wss.address();
  process.send?.({ type: "listening", port: typeof address === "string" || !address ? 0 : address.port });
});
process.on("message", (message: { type: string }) => {
  if (message.type === "usage") {
    const { user, system } = process.cpuUsage();
    process.send?.({ type: "usage", cpuMs: (user + system) / 1000, maxRssMb: Math.ceil(process.resourceUsage().maxRSS / 1024) });
  }
});
