/** What `fn` threw, or undefined when it returned: for tests that look at a refusal's type and message. */
export function caught(fn: () => unknown): Error | undefined {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  return undefined;
}
