/** What the tests share: their settings from the environment, and the code of a refused call. */
import assert from "node:assert/strict";

import { Code, ConnectError } from "@connectrpc/connect";

/** The variable `name`, which the Python suite that starts the services sets. */
export function env(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} is not set`);
  return value;
}

/** The code of the error `call` fails with. */
export async function codeOf(call: () => Promise<unknown>): Promise<Code> {
  try {
    await call();
  } catch (err) {
    return ConnectError.from(err).code;
  }
  assert.fail("the call was answered");
}
