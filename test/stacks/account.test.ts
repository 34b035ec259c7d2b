/**
 * infra/account.ts under Pulumi's mocks: the resource options each resource is registered with
 * (the mocks' newResource is not given them, so a transformation reads them as the SDK applies them).
 */
import assert from "node:assert/strict";
import * as pulumi from "@pulumi/pulumi";
import { apiGatewayAccountLogging } from "../../infra/account";

describe("API Gateway's account setting (infra/account.ts)", () => {
  it("keeps the setting, its role and the role's policy on destroy (retainOnDelete), so no stack's destroy resets another's logging", async () => {
    await pulumi.runtime.setMocks(
      {
        newResource: ({ name, inputs }) => ({ id: `${name}-id`, state: { ...inputs, name, arn: `arn:aws:iam::123456789012:role/${name}` } }),
        call: ({ inputs }) => ({ ...inputs, partition: "aws" }),
      },
      "ws-chat",
      "dev",
      false,
    );
    const seen: Record<string, pulumi.CustomResourceOptions> = {};
    const account = apiGatewayAccountLogging({
      transformations: [({ type, opts }) => ((seen[type] = opts as pulumi.CustomResourceOptions), undefined)],
    });
    await new Promise<void>((resolve) => account.cloudwatchRoleArn.apply(() => resolve()));
    assert.deepEqual(Object.keys(seen).sort(), ["aws:apigateway/account:Account", "aws:iam/role:Role", "aws:iam/rolePolicyAttachment:RolePolicyAttachment"]);
    for (const [type, opts] of Object.entries(seen)) assert.equal(opts.retainOnDelete, true, type);
  });
});
