/**
 * Chat tokens: `v2.<payload>.<signature>`, both base64url. The payload is JSON
 * `{"n":<name>,"a":<audience>,"k":<key id>,"i":<issued, epoch s>,"e":<expiry, epoch s>,"r":[<rooms>]?}`;
 * the signature is HMAC-SHA256 of `v2.<payload>` under the key that `k` names. Minted by
 * `npm run token`, checked by the $connect authorizer.
 *
 * - The audience is the stack (`<project>/<stack>`): a token minted for dev is refused by prod
 *   even if the two ever shared a key.
 * - The key id is derived from the key (the first 8 base64url characters of its SHA-256), so a
 *   rotation needs no id to be chosen or stored: the verifier holds the current and the previous
 *   key and picks the one the token names. The id tells nothing usable about the key.
 * - The verifier caps the lifetime (`e - i`) at the stack's setting and refuses tokens issued in
 *   the future (beyond a small clock skew), so a 10-year token is refused whoever signed it.
 * - v1 tokens (no audience, key id or issue time) are refused as `malformed`.
 */
import { createHash, createHmac, timingSafeEqual } from "crypto";
import { NAME_PATTERN, ROOM_PATTERN } from "./protocol";

export const MIN_KEY_LENGTH = 32;
const VERSION = "v2";
/** Tolerated difference between the minting machine's clock and Lambda's, in seconds. */
export const CLOCK_SKEW_SECONDS = 300;

export interface TokenClaims {
  name: string;
  /** The stack the token is for: `<project>/<stack>`. */
  audience: string;
  /** Issued, epoch seconds. */
  issuedAt: number;
  /** Expiry, epoch seconds. */
  expiresAt: number;
  /** Rooms the token may join; absent means any room. */
  rooms?: string[];
}

export type TokenProblem = "malformed" | "unknown_key" | "bad_signature" | "expired" | "not_yet_valid" | "too_long_lived" | "wrong_audience" | "invalid_claims";

export type Verification = { ok: true; claims: TokenClaims; keyId: string } | { ok: false; problem: TokenProblem };

/** What the verifier accepts: the current key, the previous one during a rotation, and the stack's rules. */
export interface VerifierOptions {
  keys: string[];
  audience: string;
  maxLifetimeSeconds: number;
  nowSeconds?: number;
}

/** The audience of a stack's tokens. */
export function tokenAudience(project: string, stack: string): string {
  return `${project}/${stack}`;
}

function sign(key: string, signed: string): string {
  return createHmac("sha256", key).update(signed).digest("base64url");
}

/** The public id of a key: 8 base64url characters of its SHA-256. */
export function keyIdOf(key: string): string {
  return createHash("sha256").update(key).digest("base64url").slice(0, 8);
}

export function checkKey(key: string | undefined): string {
  if (!key || key.length < MIN_KEY_LENGTH) throw new Error(`the token key must be at least ${MIN_KEY_LENGTH} characters`);
  return key;
}

export function mintToken(key: string, claims: TokenClaims): string {
  if (!NAME_PATTERN.test(claims.name)) throw new Error("name must be 1-32 letters, digits, _, . or -");
  if (!claims.audience) throw new Error("a token needs an audience (<project>/<stack>)");
  for (const room of claims.rooms ?? []) if (!ROOM_PATTERN.test(room)) throw new Error(`invalid room "${room}"`);
  checkKey(key);
  const body = { n: claims.name, a: claims.audience, k: keyIdOf(key), i: claims.issuedAt, e: claims.expiresAt, ...(claims.rooms ? { r: claims.rooms } : {}) };
  const payload = Buffer.from(JSON.stringify(body)).toString("base64url");
  return `${VERSION}.${payload}.${sign(key, `${VERSION}.${payload}`)}`;
}

interface Payload { n?: unknown; a?: unknown; k?: unknown; i?: unknown; e?: unknown; r?: unknown }

function readPayload(encoded: string): Payload | undefined {
  try {
    const value = JSON.parse(Buffer.from(encoded, "base64url").toString("utf8"));
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

function claimsOf(payload: Payload): TokenClaims | undefined {
  const { n, a, i, e, r } = payload;
  const integer = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v);
  if (typeof n !== "string" || !NAME_PATTERN.test(n) || typeof a !== "string" || !integer(i) || !integer(e)) return undefined;
  if (r !== undefined && (!Array.isArray(r) || !r.every((room) => typeof room === "string" && ROOM_PATTERN.test(room)))) return undefined;
  return { name: n, audience: a, issuedAt: i, expiresAt: e, ...(r ? { rooms: r as string[] } : {}) };
}

/** Checks, in this order: shape, key id, signature, claims, audience, issue time, expiry, lifetime. */
export function verifyToken(token: string, options: VerifierOptions): Verification {
  const now = options.nowSeconds ?? Math.floor(Date.now() / 1000);
  const parts = token.split(".");
  if (parts.length !== 3 || parts[0] !== VERSION || !parts[1] || !parts[2]) return { ok: false, problem: "malformed" };
  const payload = readPayload(parts[1]);
  if (!payload) return { ok: false, problem: "malformed" };
  const key = options.keys.find((candidate) => keyIdOf(candidate) === payload.k);
  if (!key) return { ok: false, problem: "unknown_key" };
  const expected = Buffer.from(sign(key, `${VERSION}.${parts[1]}`));
  const given = Buffer.from(parts[2]);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return { ok: false, problem: "bad_signature" };
  const claims = claimsOf(payload);
  if (!claims) return { ok: false, problem: "invalid_claims" };
  if (claims.audience !== options.audience) return { ok: false, problem: "wrong_audience" };
  if (claims.issuedAt > now + CLOCK_SKEW_SECONDS) return { ok: false, problem: "not_yet_valid" };
  if (claims.expiresAt <= now) return { ok: false, problem: "expired" };
  if (claims.expiresAt - claims.issuedAt > options.maxLifetimeSeconds) return { ok: false, problem: "too_long_lived" };
  return { ok: true, claims, keyId: keyIdOf(key) };
}
