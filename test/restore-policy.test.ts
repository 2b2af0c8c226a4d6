// expect: each RF policy reproduces its historic behaviour, and rf=reject refuses an RF image naming RF.
import t from 'tap';
import { ImageRejectedError } from '../harness/errors.ts';
import { assertPolicyAdmits, CALLEE_SAVED, parseRegsPolicy, parseRfPolicy, restoredEflags, restoredRegisters, RF_POLICIES } from '../harness/restore/policy.ts';
import { EFLAGS, USER_REGS_FIELDS } from '../harness/x86/registers.ts';
import { syntheticRegs } from './support/synthetic-image.ts';

const WITH_RF = 0x10246n;
const WITHOUT_RF = 0x246n;

t.test('keep-and-preserve: RF from the image, plus RF the restarting task has', async (t) => {
  t.equal(restoredEflags(WITH_RF, 0x202n, { rf: 'keep-and-preserve' }), WITH_RF);
  t.equal(restoredEflags(WITHOUT_RF, 0x202n | EFLAGS.RF, { rf: 'keep-and-preserve' }), WITHOUT_RF | EFLAGS.RF, 'preserves the task RF');
  t.equal(restoredEflags(WITHOUT_RF, 0x202n, { rf: 'keep-and-preserve' }), WITHOUT_RF);
});

t.test('keep: exactly the image', async (t) => {
  t.equal(restoredEflags(WITH_RF, 0x202n, { rf: 'keep' }), WITH_RF);
  t.equal(restoredEflags(WITHOUT_RF, 0x202n | EFLAGS.RF, { rf: 'keep' }), WITHOUT_RF, 'does not preserve the task RF');
});

t.test('clear: RF dropped (the first 2009 patch)', async (t) => {
  t.equal(restoredEflags(WITH_RF, 0x202n | EFLAGS.RF, { rf: 'clear' }), WITHOUT_RF);
});

t.test('reject: refuses RF with an error naming it; admits images without RF', async (t) => {
  const error = t.throws(() => assertPolicyAdmits(WITH_RF, { rf: 'reject' })) as unknown as ImageRejectedError;
  t.ok(error instanceof ImageRejectedError);
  t.equal(error.entry, 'regs.json');
  t.equal(error.field, 'eflags.RF');
  t.match(error.message, /RF/);
  t.doesNotThrow(() => assertPolicyAdmits(WITHOUT_RF, { rf: 'reject' }));
  t.equal(restoredEflags(WITHOUT_RF, 0x202n, { rf: 'reject' }), WITHOUT_RF);
  for (const rf of RF_POLICIES.filter((p) => p !== 'reject')) t.doesNotThrow(() => assertPolicyAdmits(WITH_RF, { rf }), `${rf} admits RF`);
});

t.test('policy names parse, unknown ones are refused', async (t) => {
  for (const p of RF_POLICIES) t.equal(parseRfPolicy(p), p);
  t.throws(() => parseRfPolicy('drop'), /unknown rf policy/);
});

t.test("regs=partial keeps the restarting task's callee-saved registers (the 2015 entry bug); full restores all", async (t) => {
  const image = syntheticRegs();
  const target = syntheticRegs({ rbp: 0xdeadn, rbx: 0xbeefn, r12: 12n, r13: 13n, r14: 14n, r15: 15n, rax: 0xaaaan, eflags: 0x202n });
  const full = restoredRegisters(image, target, { rf: 'keep', regs: 'full' });
  t.same(full, image, 'full: exactly the image');
  t.same(restoredRegisters(image, target, { rf: 'keep' }), image, 'absent means full');
  const partial = restoredRegisters(image, target, { rf: 'keep', regs: 'partial' });
  const differing = USER_REGS_FIELDS.filter((n) => partial[n] !== image[n]);
  t.same(differing, ['r15', 'r14', 'r13', 'r12', 'rbp', 'rbx'], 'partial: exactly the callee-saved registers differ');
  t.equal(partial.rax, image.rax);
  t.same([...CALLEE_SAVED].sort(), ['r12', 'r13', 'r14', 'r15', 'rbp', 'rbx']);
  t.throws(() => parseRegsPolicy('some'), /unknown regs policy/);
  t.equal(parseRegsPolicy('partial'), 'partial');
});

t.test("omit=string-regs keeps the restarting task's RCX, RSI and RDI, nothing else", async (t) => {
  const image = syntheticRegs({ rcx: 3n, rsi: 0x4000n, rdi: 0x5000n });
  const target = syntheticRegs({ rcx: 0n, rsi: 0x7n, rdi: 0x9n, rax: 0xaaaan, rbx: 0xbeefn });
  const omitted = restoredRegisters(image, target, { rf: 'keep', omit: ['string-regs'] });
  t.same(USER_REGS_FIELDS.filter((n) => omitted[n] !== image[n]).sort(), ['rcx', 'rdi', 'rsi'], 'exactly the string registers differ');
  t.same([omitted.rcx, omitted.rsi, omitted.rdi], [0n, 0x7n, 0x9n], "they are the target's");
  t.same(restoredRegisters(image, target, { rf: 'keep' }), image, 'without the omit: the image');
});
