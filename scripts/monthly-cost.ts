/**
 * `npm run -s cost` prints what a deployed stack costs a month at three sizes (docs/deploy.md,
 * "What it costs a month"): a model from list prices and the traffic each chat action causes,
 * not a bill. Change the assumptions below, or call `monthlyCost` with your own usage.
 */

/** us-east-1 list prices, in dollars; sources in docs/deploy.md. */
export const PRICES = {
  apiMessage: 1.0 / 1e6, // first billion a month
  apiMessageOverBillion: 0.8 / 1e6,
  connectionMinute: 0.25 / 1e6,
  lambdaRequest: 0.2 / 1e6,
  lambdaGbSecond: { arm64: 0.0000133334, x86_64: 0.0000166667 },
  writeRequestUnit: 0.625 / 1e6,
  readRequestUnit: 0.125 / 1e6,
  alarmMonth: 0.1,
} as const;

export interface Usage {
  people: number;
  hoursPerDay: number;
  days: number;
  messagesPerDay: number;
  roomSize: number;
}

export interface Assumptions {
  architecture: keyof typeof PRICES.lambdaGbSecond;
  memoryGb: number;
  /** Billed duration of an average invocation: assumed, not measured on AWS. */
  secondsPerInvocation: number;
  alarms: number;
}

/** Prod's functions (512 MB, arm64), an assumed 30 ms an invocation, and prod's alarm count. */
export const PROD: Assumptions = { architecture: "arm64", memoryGb: 0.5, secondsPerInvocation: 0.03, alarms: 40 };

export const SIZES: Record<string, Usage> = {
  "a team": { people: 50, hoursPerDay: 8, days: 22, messagesPerDay: 2_000, roomSize: 10 },
  "a community": { people: 5_000, hoursPerDay: 2, days: 30, messagesPerDay: 100_000, roomSize: 50 },
  "a large service": { people: 100_000, hoursPerDay: 1, days: 30, messagesPerDay: 2_000_000, roomSize: 100 },
};

export interface MonthlyCost {
  apiMessages: number;
  connectionMinutes: number;
  invocations: number;
  dollars: { apiMessages: number; connectionMinutes: number; lambda: number; dynamodb: number; alarms: number; total: number };
}

/** API Gateway bills the first billion messages of a month at one price and the rest at another. */
export function apiMessageDollars(messages: number): number {
  const first = Math.min(messages, 1e9);
  return first * PRICES.apiMessage + (messages - first) * PRICES.apiMessageOverBillion;
}

/**
 * Per chat message in a room of R: the sender's frame, R − 1 deliveries and the ack (R + 1), and a
 * typing signal before it (its frame and R − 1 deliveries: R); two invocations (sendmessage,
 * typing); 7 write units (budget, the room's number, the message and its id claim as one
 * transaction at 2 units an item, typing's conditional write) and one read unit (the room's Query).
 * Per connection (at most 2 hours, then a reconnect): a join and a leave delivered to R members;
 * five invocations ($connect, the authorizer, $disconnect, presence twice); 10 write units.
 */
export function monthlyCost(usage: Usage, assumptions: Assumptions = PROD): MonthlyCost {
  const messages = usage.messagesPerDay * usage.days;
  const connections = usage.people * usage.days * Math.ceil(usage.hoursPerDay / 2);
  const connectionMinutes = usage.people * usage.hoursPerDay * 60 * usage.days;
  const apiMessages = messages * (2 * usage.roomSize + 1) + connections * 2 * usage.roomSize;
  const invocations = messages * 2 + connections * 5;
  const gbSeconds = invocations * assumptions.memoryGb * assumptions.secondsPerInvocation;
  const dollars = {
    apiMessages: apiMessageDollars(apiMessages),
    connectionMinutes: connectionMinutes * PRICES.connectionMinute,
    lambda: invocations * PRICES.lambdaRequest + gbSeconds * PRICES.lambdaGbSecond[assumptions.architecture],
    dynamodb: (messages * 7 + connections * 10) * PRICES.writeRequestUnit + messages * PRICES.readRequestUnit,
    alarms: assumptions.alarms * PRICES.alarmMonth,
    total: 0,
  };
  dollars.total = dollars.apiMessages + dollars.connectionMinutes + dollars.lambda + dollars.dynamodb + dollars.alarms;
  return { apiMessages, connectionMinutes, invocations, dollars };
}

const money = (n: number) => (n >= 100 ? `$${Math.round(n).toLocaleString("en-US")}` : `$${n.toFixed(2)}`);

/** The table docs/deploy.md shows, as Markdown. */
export function costTable(assumptions: Assumptions = PROD): string {
  const rows = Object.entries(SIZES).map(([name, usage]) => {
    const { dollars } = monthlyCost(usage, assumptions);
    const messages = (usage.messagesPerDay * usage.days).toLocaleString("en-US");
    return `| ${name} | ${usage.people.toLocaleString("en-US")}, ${usage.hoursPerDay} h × ${usage.days} days | ${messages} (${usage.roomSize}) | ${money(dollars.apiMessages)} | ${money(dollars.connectionMinutes)} | ${money(dollars.lambda)} | ${money(dollars.dynamodb)} | ${money(dollars.alarms)} | **${money(dollars.total)}** |`;
  });
  return [
    "| size | people, time connected | messages a month (room size) | API Gateway messages | connection minutes | Lambda | DynamoDB | alarms | total |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ...rows,
  ].join("\n");
}

if (require.main === module) {
  const architecture = process.argv.includes("--x86_64") ? "x86_64" : "arm64";
  console.log(costTable({ ...PROD, architecture }));
}
