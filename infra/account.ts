/**
 * API Gateway's CloudWatch role: the role API Gateway uses to write execution and access logs for
 * every REST and WebSocket API of the account in the Region. It is one setting per account and
 * Region, so a per-environment stack does not own it by default (`manageApiGatewayAccount` false:
 * docs/account-settings.md gives the one-time set-up). A stack that opts in must never take it
 * away from the others: since terraform-provider-aws 6 (which @pulumi/aws 7 wraps), deleting
 * aws_api_gateway_account resets the account's role
 * (https://github.com/hashicorp/terraform-provider-aws/pull/42226), which stops the logging of every
 * API in the Region. So the setting, the role it names and the role's policy are all kept on
 * `pulumi destroy` (retainOnDelete: Pulumi drops them from the stack's state and leaves them in
 * the account), as CDK keeps its CloudWatch role and account (https://github.com/aws/aws-cdk/pull/26836).
 */
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

/** Options of every resource that holds an account-wide setting: a stack's destroy leaves it in place. */
export const ACCOUNT_WIDE: pulumi.CustomResourceOptions = { retainOnDelete: true };

/** AWS's managed policy made for exactly this role (logs actions only), in the stack's partition. */
export const pushToCloudWatchLogsPolicy = (partition: pulumi.Input<string>) =>
  pulumi.interpolate`arn:${partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs`;

/**
 * Sets the account's API Gateway CloudWatch role (and creates it); returns the setting, which a
 * stage with logging must wait for. `opts` applies to each resource, under ACCOUNT_WIDE.
 */
export function apiGatewayAccountLogging(opts: pulumi.CustomResourceOptions = {}): aws.apigateway.Account {
  const kept = { ...opts, ...ACCOUNT_WIDE };
  const role = new aws.iam.Role(
    "apigateway-cloudwatch",
    {
      assumeRolePolicy: JSON.stringify({
        Version: "2012-10-17",
        Statement: [{ Effect: "Allow", Principal: { Service: "apigateway.amazonaws.com" }, Action: "sts:AssumeRole" }],
      }),
    },
    kept,
  );
  // A separate attachment: Role.managedPolicyArns is deprecated in @pulumi/aws 7 (iam/role.d.ts).
  // The role is shared by every API in the account and Region, so it cannot be narrowed to this
  // stack's log groups.
  const attachment = new aws.iam.RolePolicyAttachment(
    "apigateway-cloudwatch",
    { role: role.name, policyArn: pushToCloudWatchLogsPolicy(aws.getPartitionOutput().partition) },
    kept,
  );
  return new aws.apigateway.Account("apigateway-account", { cloudwatchRoleArn: role.arn }, { ...kept, dependsOn: [attachment] });
}
