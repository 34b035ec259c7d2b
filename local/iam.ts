/** The small part of IAM evaluation the local stack needs: ARN wildcards and a policy's verdict. */

/** Does an IAM-style pattern (`*` any run, `?` one character) match this value? */
export function arnMatches(pattern: string, value: string): boolean {
  const regex = pattern
    .split("")
    .map((c) => (c === "*" ? ".*" : c === "?" ? "." : c.replace(/[.+^${}()|[\]\\]/g, "\\$&")))
    .join("");
  return new RegExp(`^${regex}$`).test(value);
}

interface PolicyStatement {
  Effect?: string;
  Action?: string | string[];
  Resource?: string | string[];
}

const list = (v: string | string[] | undefined) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

/** Allowed when some statement allows the action on the resource and none denies it. */
export function policyAllows(document: { Statement?: PolicyStatement | PolicyStatement[] } | undefined, action: string, resource: string): boolean {
  const statements = Array.isArray(document?.Statement) ? document!.Statement : document?.Statement ? [document.Statement] : [];
  const matches = (s: PolicyStatement) => list(s.Action).some((a) => arnMatches(a, action)) && list(s.Resource).some((r) => arnMatches(r, resource));
  return !statements.some((s) => s.Effect === "Deny" && matches(s)) && statements.some((s) => s.Effect === "Allow" && matches(s));
}
