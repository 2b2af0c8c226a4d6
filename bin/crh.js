#!/usr/bin/env node
// The CLI is TypeScript run through tsx's loader, so a clone needs no build step.
import { fileURLToPath } from 'node:url';
import { register } from 'tsx/esm/api';

// The repository's tsconfig wherever crh runs from: the modules then compile as they do under the tests'
// `--import tsx` (the same imports kept), which also lets coverage from CLI processes merge with theirs.
register({ tsconfig: fileURLToPath(new URL('../tsconfig.json', import.meta.url)) });
await import('../harness/cli/main.ts');
