/**
 * The few assertions the tests use (JSR's @std/assert cannot be installed on our machines).
 *
 * @module
 */

import { deepStrictEqual } from "node:assert/strict";

export class AssertionError extends Error {
  override name = "AssertionError";
}

export function assert(condition: unknown, message = "assertion failed"): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  try {
    deepStrictEqual(actual, expected);
  } catch (error) {
    throw new AssertionError(`${message ? message + "\n" : ""}${(error as Error).message}`);
  }
}

export function assertMatch(actual: string, pattern: RegExp, message?: string): void {
  if (!pattern.test(actual)) {
    throw new AssertionError(
      `${message ? message + "\n" : ""}expected ${
        JSON.stringify(actual.slice(0, 500))
      } to match ${pattern}`,
    );
  }
}

function checkError(
  error: unknown,
  type: new (...args: never[]) => Error,
  includes?: string,
): Error {
  if (!(error instanceof type)) {
    throw new AssertionError(`expected ${type.name}, got ${(error as Error)?.name}: ${error}`);
  }
  if (includes !== undefined && !error.message.includes(includes)) {
    throw new AssertionError(
      `expected message to include ${JSON.stringify(includes)}, got ${
        JSON.stringify(error.message)
      }`,
    );
  }
  return error;
}

/** Asserts `fn` throws an instance of `type` whose message contains `includes`. */
export function assertThrows(
  fn: () => unknown,
  type: new (...args: never[]) => Error,
  includes?: string,
): Error {
  try {
    fn();
  } catch (error) {
    return checkError(error, type, includes);
  }
  throw new AssertionError(`expected ${type.name} to be thrown`);
}

/** Asserts the promise from `fn` rejects with an instance of `type` whose message contains `includes`. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  type: new (...args: never[]) => Error,
  includes?: string,
): Promise<Error> {
  try {
    await fn();
  } catch (error) {
    return checkError(error, type, includes);
  }
  throw new AssertionError(`expected ${type.name} to be thrown`);
}
