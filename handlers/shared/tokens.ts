/**
 * Chat tokens: `v1.<payload>.<signature>`, both base64url. The payload is JSON
 * `{"n":<name>,"e":<expiry, epoch seconds>,"r":[<rooms>]?}`; the signature is HMAC-SHA256 of
 * `v1.<payload>` under the stack's token key. Minted by `npm run token`, checked by the
 * $connect authorizer.
 */
import { createHmac, timingSafeEqual } from "crypto";
import { NAME_PATTERN, ROOM_PATTERN } from "./protocol";

export const MIN_KEY_LENGTH = 32;

export interface TokenClaims {
  name: string;
  /** Expiry, epoch seconds. */
  expiresAt: number;
  /** Rooms the token may join; absent means any room. */
  rooms?: string[];
}

export type TokenProblem = "malformed" | "bad_signature" | "expired" | "invalid_claims";

export type Verification = { ok: true; claims: TokenClaims } | { ok: false; problem: TokenProblem };

function sign(key: string, signed: string): string {
  return createHmac("sha256", key).update(signed).digest("base64url");
}

export function checkKey(key: string | undefined): string {
  if (!key || key.length < MIN_KEY_LENGTH) throw new Error(`the token key must be at least ${MIN_KEY_LENGTH} characters`);
  return key;
}

export function mintToken(key: string, claims: TokenClaims): string {
  if (!NAME_PATTERN.test(claims.name)) throw new Error("name must be 1-32 letters, digits, _, . or -");
  for (const room of claims.rooms ?? []) if (!ROOM_PATTERN.test(room)) throw new Error(`invalid room "${room}"`);
  const payload = Buffer.from(JSON.stringify({ n: claims.name, e: claims.expiresAt, ...(claims.rooms ? { r: claims.rooms } : {}) })).toString("base64url");
  return `v1.${payload}.${sign(checkKey(key), `v1.${payload}`)}`;
}

export function verifyToken(key: string, token: string, nowSeconds = Math.floor(Date.now() / 1000)): Verification {
  const parts = token.split(".");
  if (parts.length !== 3 || parts[0] !== "v1" || !parts[1] || !parts[2]) return { ok: false, problem: "malformed" };
  const expected = Buffer.from(sign(key, `v1.${parts[1]}`));
  const given = Buffer.from(parts[2]);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return { ok: false, problem: "bad_signature" };
  let payload: { n?: unknown; e?: unknown; r?: unknown };
  try {
    payload = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  } catch {
    return { ok: false, problem: "malformed" };
  }
  const rooms = payload.r;
  if (
    typeof payload.n !== "string" || !NAME_PATTERN.test(payload.n) ||
    typeof payload.e !== "number" || !Number.isInteger(payload.e) ||
    (rooms !== undefined && (!Array.isArray(rooms) || !rooms.every((r) => typeof r === "string" && ROOM_PATTERN.test(r))))
  ) {
    return { ok: false, problem: "invalid_claims" };
  }
  if (payload.e <= nowSeconds) return { ok: false, problem: "expired" };
  return { ok: true, claims: { name: payload.n, expiresAt: payload.e, ...(rooms ? { rooms: rooms as string[] } : {}) } };
}
