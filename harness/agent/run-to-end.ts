/**
 * RUN's timeout as an outcome: isRunTimeout and runToEnd, for the modules
 * that import them from here. They live in guest-run.ts, the one module that
 * runs a program under the agent.
 */
export { isRunTimeout, runToEnd, type RunEnd } from './guest-run.ts';
