/**
 * The stack's settings, read from `pulumi.Config` (the only place that does) and validated.
 * Values come from Pulumi.<stack>.yaml, with the defaults declared in Pulumi.yaml. The token key
 * is a secret (`pulumi config set --secret tokenKey …`), read only when auth is on, and handed on
 * as a secret Output: it reaches the authorizer as an environment variable, never as code.
 */
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { MIN_KEY_LENGTH } from "../handlers/shared/tokens";
import { LAMBDA_CONCURRENCY_QUOTA_CODE, plannedReservations, PreflightError, reservedConcurrencyProblems } from "./preflight";
import { parseSettings, SettingsError, StackSettings } from "./settings";

export type { StackSettings } from "./settings";

export interface StackConfig extends StackSettings {
  /** Present when `authEnabled`. */
  readonly tokenKey?: pulumi.Output<string>;
  /** The key being rotated out, when set (`tokenPreviousKey`): tokens it signed stay valid until they expire. */
  readonly tokenPreviousKey?: pulumi.Output<string>;
  /**
   * Resolves once the account can take what the stack reserves (stacks/preflight.ts); rejects with
   * the refusal otherwise. `pulumi up` previews first and data sources are read in the preview, so
   * a refusal stops it before any change; each reservation also waits for it (infra/function.ts).
   */
  readonly preflight: pulumi.Output<void>;
}

/**
 * Looks the account's Lambda concurrency quota up (Service Quotas, which needs
 * servicequotas:GetServiceQuota) only when the stack reserves any: a stack reserving nothing asks
 * the account nothing.
 */
function accountPreflight(settings: StackSettings): pulumi.Output<void> {
  const reservations = plannedReservations(settings);
  if (Object.keys(reservations).length === 0) return pulumi.output(undefined);
  const quota = aws.servicequotas.getServiceQuotaOutput({ serviceCode: "lambda", quotaCode: LAMBDA_CONCURRENCY_QUOTA_CODE });
  return pulumi.all([aws.getRegionOutput().region, quota.value]).apply(([region, value]) => {
    const problems = reservedConcurrencyProblems({ stack: pulumi.getStack(), region, reservations, quota: value });
    if (problems.length > 0) throw new PreflightError(problems);
  });
}

export function loadStackSettings(): StackConfig {
  const config = new pulumi.Config();
  const parsed = parseSettings(config.name, (key) => config.get(key));
  if (parsed.benchSeedFanout && pulumi.getStack() === "prod") {
    throw new SettingsError([`${config.name}:benchSeedFanout serves the seed's sendmessage, which loses messages; it is for benchmarks and refused on prod`]);
  }
  const settings = { ...parsed, preflight: accountPreflight(parsed) };
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
