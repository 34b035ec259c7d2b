/**
 * The stack's settings, read from `pulumi.Config` (the only place that does) and validated.
 * Values come from Pulumi.<stack>.yaml, with the defaults declared in Pulumi.yaml. The token key
 * is a secret (`pulumi config set --secret tokenKey …`), read only when auth is on, and handed on
 * as a secret Output: it reaches the authorizer as an environment variable, never as code.
 */
import * as pulumi from "@pulumi/pulumi";
import { MIN_KEY_LENGTH } from "../handlers/shared/tokens";
import { parseSettings, SettingsError, StackSettings } from "./settings";

export type { StackSettings } from "./settings";

export interface StackConfig extends StackSettings {
  /** Present when `authEnabled`. */
  readonly tokenKey?: pulumi.Output<string>;
  /** The key being rotated out, when set (`tokenPreviousKey`): tokens it signed stay valid until they expire. */
  readonly tokenPreviousKey?: pulumi.Output<string>;
}

export function loadStackSettings(): StackConfig {
  const config = new pulumi.Config();
  const settings = parseSettings(config.name, (key) => config.get(key));
  if (settings.benchSeedFanout && pulumi.getStack() === "prod") {
    throw new SettingsError([`${config.name}:benchSeedFanout serves the seed's sendmessage, which loses messages; it is for benchmarks and refused on prod`]);
  }
  if (!settings.authEnabled) return settings;
  if (config.get("tokenKey") === undefined) {
    throw new SettingsError([
      `${config.name}:tokenKey is required when authEnabled is true: pulumi config set --secret tokenKey "$(openssl rand -base64 48)"`,
    ]);
  }
  const checked = (key: string) =>
    config.requireSecret(key).apply((value) => {
      if (value.length < MIN_KEY_LENGTH) throw new SettingsError([`${config.name}:${key} must be at least ${MIN_KEY_LENGTH} characters`]);
      return value;
    });
  const tokenKey = checked("tokenKey");
  const tokenPreviousKey = config.get("tokenPreviousKey") === undefined ? undefined : checked("tokenPreviousKey");
  return { ...settings, tokenKey, ...(tokenPreviousKey ? { tokenPreviousKey } : {}) };
}
