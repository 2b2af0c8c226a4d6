// expect: the accelerator probe reports TCG as working by running real guest code, and reports a broken accelerator with its reason instead of hanging.
import t from 'tap';
import { chooseAccelerator, probeAccelerator } from '../harness/machine/accel.ts';

t.test('TCG runs the probe firmware to its isa-debug-exit', async (t) => {
  t.equal(await probeAccelerator('tcg'), null);
});

t.test('the choice names its reason', async (t) => {
  const choice = await chooseAccelerator();
  t.ok(['kvm', 'tcg'].includes(choice.accel));
  t.ok(choice.reason.length > 0, `${choice.accel}: ${choice.reason}`);
  if (choice.accel === 'tcg') t.comment(`platform deviation recorded: ${choice.reason}`);
});
