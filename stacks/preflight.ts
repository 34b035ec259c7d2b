/**
 * What the program checks about the account before it creates anything (docs/deploy-quotas.md).
 * Pure: it takes the numbers and returns the problems; index.ts looks the quota up through the
 * provider and refuses with these messages.
 *
 * Reserved concurrency. Lambda refuses a reservation that leaves fewer than 100 concurrent
 * executions unreserved ("You can reserve up to the Unreserved account concurrency value minus
 * 100", https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html), and new
 * accounts start far below the default quota of 1,000 ("New AWS accounts have reduced concurrency
 * and memory quotas", https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html;
 * accounts at 10 are reported, e.g. https://github.com/awslabs/fhir-works-on-aws-deployment/issues/691).
 * Without this check prod's functions are created and then refused (InvalidParameterValueException:
 * "Specified ReservedConcurrentExecutions for function decreases account's
 * UnreservedConcurrentExecution below its minimum value"). The quota is read from Service Quotas
 * (L-B99A9384, "Concurrent executions"), which shows a new account's reduced value as its applied
 * quota (https://benellis.cloud/my-lambda-concurrency-applied-quota-is-only-10-but-why). What other
 * stacks in the same account and Region reserve is not visible here and comes on top.
 */
import type { SettingKey, StackSettings } from "./settings";

/** Service Quotas' code for Lambda's "Concurrent executions" (per account and Region). */
export const LAMBDA_CONCURRENCY_QUOTA_CODE = "L-B99A9384";
/** What Lambda keeps unreserved for functions without a reservation. */
export const UNRESERVED_MINIMUM = 100;

/** Each function's reservation setting, by the function's short name (infra/function.ts builds `<project>-<name>`). */
export const RESERVATION_SETTINGS = {
  connect: "reservedConcurrencyConnect",
  disconnect: "reservedConcurrencyDisconnect",
  authorizer: "reservedConcurrencyAuthorizer",
  sendmessage: "reservedConcurrencySendMessage",
  fanout: "reservedConcurrencyFanout",
  history: "reservedConcurrencyHistory",
  default: "reservedConcurrencyDefault",
  presence: "reservedConcurrencyPresence",
  typing: "reservedConcurrencyTyping",
  members: "reservedConcurrencyMembers",
  read: "reservedConcurrencyRead",
} as const satisfies Record<string, SettingKey>;

export type ReservingFunction = keyof typeof RESERVATION_SETTINGS;

/**
 * The reservations this stack will make, per function, above 0: the authorizer only with auth on,
 * and none for the benchmark's seed sendmessage (index.ts gives it no reservation).
 */
export function plannedReservations(settings: StackSettings): Partial<Record<ReservingFunction, number>> {
  const planned: Partial<Record<ReservingFunction, number>> = {};
  for (const [fn, key] of Object.entries(RESERVATION_SETTINGS) as [ReservingFunction, (typeof RESERVATION_SETTINGS)[ReservingFunction]][]) {
    if (fn === "authorizer" && !settings.authEnabled) continue;
    if (fn === "sendmessage" && settings.benchSeedFanout) continue;
    if (settings[key] > 0) planned[fn] = settings[key];
  }
  return planned;
}

export interface ConcurrencyCheck {
  stack: string;
  region: string;
  /** From plannedReservations. */
  reservations: Partial<Record<ReservingFunction, number>>;
  /** The account's concurrency quota in the Region (Service Quotas L-B99A9384). */
  quota: number;
}

/** Problems with the planned reservations against the quota; empty when Lambda will accept them. */
export function reservedConcurrencyProblems({ stack, region, reservations, quota }: ConcurrencyCheck): string[] {
  const counts = Object.values(reservations);
  const reserved = counts.reduce((sum, n) => sum + n, 0);
  if (reserved === 0) return [];
  const needed = reserved + UNRESERVED_MINIMUM;
  if (quota >= needed) return [];
  const keys = Object.keys(reservations) as ReservingFunction[];
  return [
    `${stack} reserves ${reserved} concurrent executions over ${counts.length} function${counts.length === 1 ? "" : "s"}; ` +
      `your account's concurrency quota in ${region} is ${quota}; Lambda keeps ${UNRESERVED_MINIMUM} unreserved; ` +
      `ask for quota ${LAMBDA_CONCURRENCY_QUOTA_CODE} ≥ ${needed} (Service Quotas: aws service-quotas request-service-quota-increase ` +
      `--service-code lambda --quota-code ${LAMBDA_CONCURRENCY_QUOTA_CODE} --desired-value ${needed} --region ${region}), ` +
      `or set ${keys.map((k) => RESERVATION_SETTINGS[k]).join(", ")} to 0 (pulumi config set <key> 0; docs/deploy-quotas.md)`,
  ];
}

export class PreflightError extends Error {
  constructor(readonly problems: string[]) {
    super(`refused before creating anything:\n  - ${problems.join("\n  - ")}`);
    this.name = "PreflightError";
  }
}
