// expect: the checkpoint-time refusal reads recorded /proc text right: descriptor links by kind (userfaultfd and paths left to their modules), a path's file type from st_mode (FIFO, socket file, device node), personality against what a spawn gives, seccomp and no_new_privs, a tracee's TracerPid, POSIX timers, limits; the error names every state found.
import t from 'tap';
import { CheckpointError } from '../harness/errors.ts';
import {
  descriptorState,
  describePersonality,
  fileTypeState,
  limitsDiffer,
  personalityProblem,
  statusProblems,
  timersProblems,
  timerfdUncapturable,
  tracerProblem,
  kernelThreadPids,
  uncapturableError,
} from '../harness/restore/uncapturable.ts';

/** Lines of /proc/PID/status as Linux 6.x writes them (tabs after the colon). */
const status = (fields: Record<string, string>): string =>
  [
    'Name:\tholdstate',
    'Umask:\t0022',
    'State:\tt (tracing stop)',
    'Tgid:\t812',
    'Pid:\t812',
    'PPid:\t300',
    `TracerPid:\t${fields.TracerPid ?? '300'}`,
    `NoNewPrivs:\t${fields.NoNewPrivs ?? '0'}`,
    `Seccomp:\t${fields.Seccomp ?? '0'}`,
    'Seccomp_filters:\t0',
    'Speculation_Store_Bypass:\tthread vulnerable',
    '',
  ].join('\n');

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max stack size            8388608              unlimited            bytes     
Max open files            1024                 524288               files     
`;

t.test('descriptor links by kind', async (t) => {
  t.equal(descriptorState('/tmp/log'), undefined, 'a path: files.ts decides');
  t.equal(descriptorState('/dev/null'), undefined);
  t.equal(descriptorState('anon_inode:[userfaultfd]'), undefined, 'userfaultfd.ts handles it');
  t.equal(descriptorState('anon_inode:[eventfd]'), undefined, "an eventfd is event-fds.ts's");
  t.equal(descriptorState('anon_inode:[eventpoll]'), 'eventpoll');
  t.equal(descriptorState('anon_inode:[signalfd]'), undefined, "a signalfd is event-fds.ts's");
  t.equal(descriptorState('anon_inode:[timerfd]'), undefined, "a timerfd is timers.ts's");
  t.equal(descriptorState('anon_inode:[io_uring]'), 'io_uring');
  t.equal(descriptorState('anon_inode:[perf_event]'), 'perf_event');
  t.equal(descriptorState('anon_inode:inotify'), 'inotify');
  t.equal(descriptorState('anon_inode:[fanotify]'), 'fanotify');
  t.equal(descriptorState('anon_inode:[pidfd]'), 'pidfd');
  t.equal(descriptorState('anon_inode:bpf-map'), 'bpf-map');
  t.equal(descriptorState('anon_inode:bpf-prog'), 'bpf-prog');
  t.equal(descriptorState('socket:[160145]'), 'socket');
  t.equal(descriptorState('pipe:[159174]'), 'pipe');
  t.equal(descriptorState('net:[4026531840]'), 'net namespace');
  t.equal(descriptorState('/memfd:holdstate (deleted)'), 'memfd');
});

t.test('a path descriptor by its st_mode: FIFOs, socket files and device nodes refused, files and directories not', async (t) => {
  t.equal(fileTypeState(0o100644), undefined, 'a regular file');
  t.equal(fileTypeState(0o40755), undefined, 'a directory');
  t.equal(fileTypeState(0o10600), 'fifo');
  t.equal(fileTypeState(0o140777), 'unix socket file');
  t.equal(fileTypeState(0o20666), 'character device');
  t.equal(fileTypeState(0o60660), 'block device');
});

t.test('personality against what a restore spawn gives', async (t) => {
  t.equal(personalityProblem(812, '00040000\n', '00000000\n', true), undefined, 'ADDR_NO_RANDOMIZE, added by the agent when ASLR is off');
  t.equal(personalityProblem(812, '00000000\n', '00000000\n', false), undefined);
  t.match(personalityProblem(812, '00440000\n', '00000000\n', true), {
    state: 'personality',
    where: '/proc/812/personality',
    seen: /0x440000 \(ADDR_NO_RANDOMIZE\|READ_IMPLIES_EXEC\)/,
  });
  t.match(personalityProblem(812, '00000000\n', '00000000\n', true), { seen: /gets 0x40000/ }, 'a process that turned ASLR back on');
  t.match(personalityProblem(812, '00000008\n', '00000000\n', false), { seen: /execution domain 0x8/ }, 'PER_LINUX32');
  t.equal(describePersonality(0x0800000 | 0x10000000), 'ADDR_LIMIT_32BIT|0x10000000');
});

t.test('seccomp, no_new_privs and a tracee', async (t) => {
  t.same(statusProblems('thread 812', status({}), status({})), []);
  t.same(
    statusProblems('thread 812', status({ Seccomp: '2', NoNewPrivs: '1' }), status({})).map((p) => [p.state, p.seen]),
    [
      ['seccomp', 'Seccomp: 2, a restored process gets 0'],
      ['no_new_privs', 'NoNewPrivs: 1, a restored process gets 0'],
    ],
  );
  t.same(
    statusProblems('thread 812', status({ Seccomp: '2' }), status({ Seccomp: '2' })),
    [],
    'the agent runs under the same filter mode: a spawn inherits it',
  );
  t.match(tracerProblem(813, status({ TracerPid: '812' }), new Set([812, 814])), { state: 'ptrace tracee', where: 'pid 813' });
  t.match(tracerProblem(813, status({ TracerPid: '814' }), new Set([812, 814])), { state: 'ptrace tracee' }, 'traced by one of its other threads');
  t.equal(tracerProblem(813, status({ TracerPid: '300' }), new Set([812])), undefined, 'traced by someone else');
  t.equal(tracerProblem(813, status({ TracerPid: '0' }), new Set([812])), undefined);
});

t.test("kernel threads, whose status the tracee search skips: kthreadd's children, only when pid 2 is kthreadd", async (t) => {
  // A real /proc/2/stat of the 6.1 guest (flags 2129984 = 0x208040: PF_KTHREAD among them).
  const stat =
    '2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 0 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0';
  t.same([...kernelThreadPids(stat, '3 4 5 6 15 \n')], [2, 3, 4, 5, 6, 15]);
  t.same([...kernelThreadPids(stat, '')], [2], 'no children yet');
  t.same([...kernelThreadPids(stat.replace('2129984', '4194560'), '3 4')], [], 'pid 2 without PF_KTHREAD (a pid namespace): nothing skipped');
  t.same([...kernelThreadPids(stat.replace('(kthreadd)', '(sh)'), '3 4')], [], 'pid 2 named otherwise: nothing skipped');
  t.same([...kernelThreadPids(stat.replace('(kthreadd)', '(kthreadd) x)'), '3 4')], [], 'a comm with ") " in it is read to its last ")"');
  t.same([...kernelThreadPids(undefined, '3 4')], [], 'no pid 2 at all');
  t.same([...kernelThreadPids(stat, undefined)], [], 'no children file (CONFIG_PROC_CHILDREN off): nothing skipped');
  t.same([...kernelThreadPids('garbage', '3')], []);
});

t.test('POSIX timers and limits', async (t) => {
  t.same(timersProblems(812, ''), []);
  t.same(
    timersProblems(
      812,
      'ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.812\nClockID: 1\nID: 1\nsignal: 0/0000000000000000\nnotify: none/pid.812\nClockID: 1\nID: 2\nsignal: 12/00000000deadbeef\nnotify: signal/tid.813\nClockID: 2\n',
    ),
    [],
    'SIGEV_SIGNAL, SIGEV_NONE and SIGEV_THREAD_ID on restorable clocks are captured',
  );
  t.match(
    timersProblems(
      812,
      'ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.812\nClockID: 1\nID: 5\nsignal: 12/0000000000000000\nnotify: thread/pid.812\nClockID: 1\nID: 6\nsignal: 12/0000000000000000\nnotify: signal/pid.812\nClockID: -6\n',
    ),
    [
      { state: 'POSIX timer', where: '/proc/812/timers id 5', seen: /SIGEV_THREAD/ },
      { state: 'POSIX timer', where: '/proc/812/timers id 6', seen: /clock -6/ },
    ],
  );
  t.match(timersProblems(812, 'ID: x\n'), [{ state: 'POSIX timer', seen: /unreadable/ }]);
  const fdinfo = (settime: string, clock = 1): string =>
    `pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\nclockid: ${clock}\nticks: 0\nsettime flags: ${settime}\nit_value: (0, 49406829)\nit_interval: (1, 0)\n`;
  t.equal(timerfdUncapturable(4, fdinfo('00')), undefined);
  t.equal(timerfdUncapturable(4, fdinfo('01')), undefined, 'TFD_TIMER_ABSTIME: restored relative');
  t.match(timerfdUncapturable(4, fdinfo('03', 0)), { state: 'timerfd', where: 'fd 4', seen: /CANCEL_ON_SET/ });
  t.match(timerfdUncapturable(4, fdinfo('00', 8)), { state: 'timerfd', seen: /clock 8/ });
  t.same(limitsDiffer(LIMITS, LIMITS), []);
  t.same(limitsDiffer(LIMITS.replace('1024                 524288', '64                   524288'), LIMITS), [
    'Max open files 64 524288 files (agent: 1024 524288 files)',
  ]);
});

t.test('the error names every state found', async (t) => {
  const error = uncapturableError(812, [
    { state: 'eventfd', where: 'fd 4', seen: 'anon_inode:[eventfd]' },
    { state: 'pipe', where: 'fd 5', seen: 'pipe:[1]' },
    { state: 'pipe', where: 'fd 6', seen: 'pipe:[1]' },
  ]);
  t.ok(error instanceof CheckpointError);
  t.equal(
    error.message,
    'pid 812 holds state the restore core does not capture: eventfd (fd 4: anon_inode:[eventfd]); pipe (fd 5: pipe:[1]); pipe (fd 6: pipe:[1])',
  );
  t.equal(error.details.state, 'eventfd, pipe');
  t.equal(error.details.where, 'fd 4: eventfd\nfd 5: pipe\nfd 6: pipe');
});
