/** Writes held until the end of the event loop's I/O phase (local/write-batch.ts). */
import assert from "node:assert/strict";
import { createServer, Server, Socket, connect } from "node:net";
import type { AddressInfo } from "node:net";
import { holdWrites, releaseWrites } from "../../local/write-batch";

describe("holdWrites", () => {
  let server: Server;
  let client: Socket;
  let peer: Socket;
  let received: Buffer[];

  beforeEach(async () => {
    received = [];
    server = createServer((s) => {
      peer = s;
      s.on("data", (d) => received.push(d));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    client = connect((server.address() as AddressInfo).port, "127.0.0.1");
    await new Promise<void>((r) => client.once("connect", () => r()));
    for (let i = 0; i < 100 && !peer; i++) await new Promise((r) => setImmediate(r));
  });
  afterEach(async () => {
    client.destroy();
    peer?.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });

  const arrived = async (text: string) => {
    for (let i = 0; i < 500 && Buffer.concat(received).toString() !== text; i++) await new Promise((r) => setTimeout(r, 2));
    return Buffer.concat(received).toString();
  };

  it("must hold every write of this turn of the loop, and send them all, in order, once the I/O phase ends", async () => {
    holdWrites(client);
    client.write("a");
    holdWrites(client); // a second hold in the same turn changes nothing
    client.write("b");
    assert.equal(client.writableCorked, 1);
    assert.ok(client.writableLength > 0, "nothing has left yet");
    await new Promise((r) => setImmediate(r));
    assert.equal(client.writableCorked, 0);
    assert.equal(await arrived("ab"), "ab");
  });

  it("must leave the writes of a later turn held again, not sent one by one", async () => {
    holdWrites(client);
    client.write("1");
    await new Promise((r) => setImmediate(r));
    holdWrites(client);
    client.write("2");
    assert.equal(client.writableCorked, 1);
    await new Promise((r) => setImmediate(r));
    assert.equal(await arrived("12"), "12");
  });

  it("must let end() send what is held", async () => {
    holdWrites(client);
    client.write("last");
    client.end();
    assert.equal(await arrived("last"), "last");
  });

  it("must send what is held at releaseWrites, so a destroy right after loses nothing, and hold nothing more that turn", async () => {
    holdWrites(client);
    client.write("kept");
    releaseWrites(client);
    assert.equal(client.writableCorked, 0);
    client.destroy();
    assert.equal(await arrived("kept"), "kept");
  });
});
