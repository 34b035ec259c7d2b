/**
 * Reads each function's identity from the loaded program, as IAM would see it after `pulumi up`:
 * the function's role and the statements of every inline policy on that role. A managed policy
 * (`managedPolicyArns` or a RolePolicyAttachment) cannot be evaluated locally, so it stops the start.
 */
import { checkSupported, PolicyStatement, Principal } from "./iam";
import type { RecordedResource } from "./program";

export interface PolicyEdit {
  /** Part of a function's physical name, e.g. "sendmessage". */
  function: string;
  /** The statement to drop, by Sid: a test's way to declare a role missing one statement. */
  dropSid: string;
}

export function principalsOf(resources: RecordedResource[], edits: PolicyEdit[] = []): Principal[] {
  const of = (type: string) => resources.filter((r) => r.type === type);
  const roles = of("aws:iam/role:Role");
  const policies = of("aws:iam/rolePolicy:RolePolicy");
  const attachments = of("aws:iam/rolePolicyAttachment:RolePolicyAttachment");
  return of("aws:lambda/function:Function").map((fn) => {
    const functionName = String(fn.state.name);
    const role = roles.find((r) => r.state.arn === fn.inputs.role);
    if (!role) throw new Error(`function ${functionName}: its role is not declared by the program`);
    const roleName = String(role.state.name);
    if ((role.inputs.managedPolicyArns ?? []).length > 0 || attachments.some((a) => [role.id, roleName].includes(a.inputs.role))) {
      throw new Error(`function ${functionName}: managed policies on its role cannot be evaluated by the local stack`);
    }
    const statements: PolicyStatement[] = policies
      .filter((p) => [role.id, roleName].includes(p.inputs.role))
      .flatMap((p) => {
        const document = JSON.parse(String(p.inputs.policy)) as { Statement?: PolicyStatement | PolicyStatement[] };
        return Array.isArray(document.Statement) ? document.Statement : document.Statement ? [document.Statement] : [];
      })
      .filter((s) => !edits.some((e) => functionName.includes(e.function) && s.Sid === e.dropSid));
    for (const statement of statements) checkSupported(statement, `function ${functionName}`);
    // Frozen: local/iam.ts keeps decisions per statements array, so a policy changes only by a new array.
    return { functionName, roleName, statements: Object.freeze(statements.map(frozen)) as PolicyStatement[] };
  });
}

/** A statement that cannot be edited in place, its Action and Resource lists included. */
function frozen(statement: PolicyStatement): PolicyStatement {
  const lists = (v: PolicyStatement["Action"]) => (Array.isArray(v) ? Object.freeze([...v]) : v) as PolicyStatement["Action"];
  return Object.freeze({ ...statement, ...("Action" in statement ? { Action: lists(statement.Action) } : {}), ...("Resource" in statement ? { Resource: lists(statement.Resource) } : {}) });
}
