/**
 * The stack's settings, read from `pulumi.Config` (the only place that does) and validated.
 * Values come from Pulumi.<stack>.yaml, with the defaults declared in Pulumi.yaml.
 */
import * as pulumi from "@pulumi/pulumi";
import { parseSettings, StackSettings } from "./settings";

export type { StackSettings } from "./settings";

export function loadStackSettings(): StackSettings {
  const config = new pulumi.Config();
  return parseSettings(config.name, (key) => config.get(key));
}
