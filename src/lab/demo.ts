/**
 * `reimage lab demo`: the main job on the embedded default, on one computer, without root and
 * without network (loopback only). See docs/lab.md ("The demo").
 *
 * 1. The management server runs in this process (SQLite in the work folder, plain HTTP on
 *    127.0.0.1); the demo logs in as its admin.
 * 2. Two sites, each with a distribution point: a folder served over HTTP (demo-dp.ts) behind
 *    an emulated WAN link (link.ts). The server replicates to it through the link, and the
 *    site's machines read from it through the same link.
 * 3. Two agent bundles, N and N+1; a PE (a tree holding bundle N+1); image v1 (a generated
 *    Debian model with client N) and v2 (v1 with files changed, added and removed, client
 *    N+1 at the boot entry's path), captured into the server's library, packaged, replicated
 *    to both DPs.
 * 4. Lab machines split over the sites, with generated users and data, an enrollment token of
 *    their site and a client.json that points at the server. The lab hashes their user data.
 * 5. An advertisement of v2 to every lab machine with a notification policy (short countdown,
 *    "later" with a small maximum, decline allowed). Every machine boots under its own
 *    firmware (runFirmware: the agent is a real process; a reboot is a real restart) and a
 *    simulated user answers its notifications by a fixed plan: now / later then now / decline /
 *    no answer (the policy's default: install).
 * 6. The demo follows the server's timelines until every machine reached its end state, powers
 *    the machines off, hashes their user data again and compares (`userDataIntact` is the
 *    lab's comparison, never the agent's report).
 */
import { spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { publishAdvertisement, type Publication } from '../cli/serverless.js';
import { ApiClient } from '../client/http.js';
import { ContentStore } from '../content/store.js';
import { ReimageError } from '../errors.js';
import { captureImage, setProperties } from '../image/capture.js';
import { exportImage, importFile } from '../image/convert.js';
import { loadFormats } from '../image/formats/registry.js';
import { defaults } from '../package/schema.js';
import { startServer, type RunningServer } from '../server/start.js';
import { buildAgentBundle } from './bundle.js';
import { startLabDp, type LabDp } from './demo-dp.js';
import { runFirmware, type FirmwareOptions, type FirmwareResult } from './firmware.js';
import { startLink, type Link } from './link.js';
import { makeMachineTree } from './machine-tree.js';
import { AGENT_BUNDLE_PATH, createLabMachine } from './machine.js';
import { compareOsTree, findRestoreReport, osTreeExceptions } from './os-tree.js';
import { compareUserData, hashUserData, type UserDataSnapshot } from './users-hash.js';

/**
 * How a simulated user answers the notifications of one machine. `consent-none` and
 * `consent-now`: the machine is in a second advertisement whose package requires the user's
 * permission; nobody answers (nothing may install), or the user says now.
 */
export type UserPlan = 'now' | 'later' | 'decline' | 'none' | 'consent-none' | 'consent-now';

/** What the lab expects a machine to end as, and what it saw. */
export type EndState =
  | 'installed'
  | 'declined'
  | 'rolled-back'
  | 'failed'
  | 'not-installed'
  | 'timeout'
  | 'halted'
  /** In a wave the rollout halted at its failure threshold: nothing started. */
  | 'held';

/**
 * A fault planted on one machine, each failing phase 1's checks for its own reason (docs/lab.md,
 * "Planted faults"): `small-disk` a 1 MiB disk (less than the image), `wrong-arch` an arm64 machine, `wrong-os` a
 * Fedora release file.
 */
export type MachineFault = 'small-disk' | 'wrong-arch' | 'wrong-os';
export const MACHINE_FAULTS: readonly MachineFault[] = ['small-disk', 'wrong-arch', 'wrong-os'];

/** A wave of the demo's advertisement, as the API takes it. */
export type DemoWave = { machines: number } | { percent: number };

/** The plan of machine `i` (0-based): the four answers in turn. */
export const USER_PLANS: readonly UserPlan[] = ['now', 'later', 'decline', 'none'];

/** A user's answer, as the notification page takes it (src/agent/notify.ts). */
export interface UserAnswer {
  choice: 'now' | 'later' | 'decline';
  /** For "later": when to ask again (ISO date-time). */
  until?: string;
}

/**
 * Answers the pending notification of the machine whose disk is `root` (the notification page's
 * own entry point, `answerNotification` of src/agent/notify.ts). `by`: through which interface.
 */
export type AnswerNotification = (
  root: string,
  answer: UserAnswer,
  by: 'web' | 'terminal',
) => Promise<unknown> | unknown;

/** Where a machine's agent shows its pending notification (relative to the disk). */
export const NOTIFICATION_FILE = '.reimage/notify/current.json';

export interface DemoOptions {
  /** The work folder (default ./lab-data/demo); emptied first if it holds an earlier demo. */
  dir: string;
  /** Lab machines (default 12), split over the sites in turn. */
  machines?: number;
  /** Site names (default paris, lyon): one DP and one link each. */
  sites?: string[];
  /** Users per machine (default 2). */
  users?: number;
  /** The plan of each machine (default USER_PLANS in turn). */
  plan?: (index: number) => UserPlan;
  /** Notification countdown in seconds (default 20). */
  countdownSeconds?: number;
  /** How long "later" postpones (default 8 s); the policy's maximum is a little more. */
  laterSeconds?: number;
  /** The emulated links (default 40 Mbit/s, 20 ms each way). */
  link?: { rateBitsPerSec?: number; latencyMs?: number };
  /** Give up after this long (default 15 min): machines not done end as "timeout". */
  timeoutMs?: number;
  /** Agent versions N and N+1 (default 1.0.0 and 1.1.0). */
  versions?: { old: string; new: string };
  /** Answers notifications; required to run machines (the notification page's entry point). */
  answer?: AnswerNotification;
  /**
   * `process` (default): each machine's firmware is its own `reimage lab boot` process;
   * `in-process`: the firmware loops run in this process (the agents are processes either way).
   */
  firmware?: 'process' | 'in-process';
  /** Extra environment for the agents the firmware boots (e.g. poll intervals for the lab). */
  agentEnv?: Record<string, string>;
  /** What the demo does, line by line (setup steps, answers, end states). */
  log?: (line: string) => void;
  /** Every second while machines run: one row per machine. */
  onProgress?: (rows: MachineProgress[]) => void;
  signal?: AbortSignal;
  /**
   * Called once every machine is done and powered off, before the server, the DPs and the
   * links stop (e.g. to keep the server up for a look around until Ctrl-C).
   */
  afterRun?: (lab: DemoLab, result: DemoResult) => Promise<void>;
  /** The checkout the agent bundles are built from (default: this one). */
  checkout?: string;
  /** The site of machine `i` (0-based; default: the sites in turn). */
  siteOf?: (index: number) => string;
  /**
   * Faults planted at sites: `corrupt-dp` flips a byte in every pack on the site's DP after
   * replication, so the site's machines really fail to fetch. With any site fault the packages
   * say `content.fallback: false`, so that DP is the only one those machines may use.
   */
  siteFaults?: Record<string, 'corrupt-dp'>;
  /** A fault planted on machine `i` (see {@link MachineFault}); its machine is expected to fail. */
  machineFaults?: (index: number) => MachineFault | undefined;
  /** Waves and thresholds of the demo's advertisement (default: no waves). */
  rollout?: {
    waves: DemoWave[];
    successThreshold?: number;
    failureThreshold?: number;
    /** `never`: a failed machine is not tried again (default if-failed: up to 3 runs, one per poll). */
    rerun?: 'never' | 'if-failed' | 'always';
  };
  /**
   * Replaces the demo's advertisement step (collections and advertisements): called once the
   * packages are replicated and every machine has booted and enrolled (their clients poll
   * every 2 s), before any is advertised to.
   */
  advertise?: (lab: DemoLab) => Promise<void>;
  /**
   * Machines (0-based indexes) deployed from an **opaque** image: v2 exported as a tar.zst file
   * and imported as is (`images.opaque`), in a package of its own (same PE and settings as the
   * main one) advertised to a collection of only these machines (docs/lab.md, "Opaque and
   * serverless machines"). Their plans may not be consent-*.
   */
  opaque?: readonly number[];
  /**
   * Machines (0-based indexes) deployed **serverless**: their client reads a folder (`share/`
   * of the work folder) where the demo publishes an advertisement of the main package, signed
   * with a key of its own; they never talk to the server. Their status lands as drop files in
   * `share/status`, which the demo imports into the server while it follows the timelines.
   * Their plans may not be consent-*.
   */
  serverless?: readonly number[];
}

/** How a machine gets its deployment: the server's policy, an opaque package, or a published folder. */
export type DemoVia = 'server' | 'opaque' | 'serverless';

/** One line of the progress table. */
export interface MachineProgress {
  name: string;
  site: string;
  plan: UserPlan;
  phase: string;
  lastStatus: string;
  statusMessages: number;
  endState?: EndState;
}

export interface DemoMachineResult {
  name: string;
  site: string;
  plan: UserPlan;
  /** How the machine got its deployment (see DemoOptions.opaque and .serverless). */
  via: DemoVia;
  fault?: MachineFault | 'corrupt-dp';
  expected: EndState;
  endState: EndState;
  /**
   * The applied image id in the server's inventory of the machine. A serverless machine sends
   * no inventory: the image its timeline reports last (1001, 5003).
   */
  imageId: string | null;
  /** The image an installed machine must run: v2, or the opaque image for an opaque machine. */
  expectedImageId: string;
  /**
   * The client version in the server's inventory of the machine; for a serverless machine the
   * version its timeline reports last (1000, 1001, 5000, 5003).
   */
  clientVersion: string | null;
  /** The lab's comparison of the user data before and after. */
  userDataIntact: boolean;
  /** Status messages in the server's timeline of the machine. */
  statusMessages: number;
  userData: { files: number; bytes: number; missing: number; changed: number; moved: number };
  guid: string | null;
  /** The GUID in the disk's etc/reimage/client.json at the end. */
  diskGuid: string | null;
  boots: number;
  /** The server's timeline: sequence number and message id, in the server's order. */
  timeline: Array<{ seq: number; id: number }>;
  /**
   * Installed machines: the restore report the deployment left on the disk (its host path;
   * `/.reimage/history/<deployment>-<time>/restore-report.json`), null if there is none.
   */
  restoreReport?: string | null;
  /**
   * Installed machines: the lab's comparison of the whole disk with the image's tree
   * (src/lab/os-tree.ts) — paths of the image missing, paths added, contents changed — except
   * the data the wipe keeps, the agent's areas and the paths the restore report names.
   */
  osTree?: { compared: number; missing: string[]; added: string[]; changed: string[] };
}

/** The demo's images; `opaque` (v2 as an opaque tar.zst) only when machines use it. */
export interface DemoImages {
  v1: string;
  v2: string;
  pe: string;
  opaque?: string;
}

export interface DemoResult {
  machines: DemoMachineResult[];
  images: DemoImages;
  versions: { old: string; new: string };
  /** Every machine ended as expected, user data intact; an installed one runs the image (osTree). */
  ok: boolean;
  seconds: number;
  server: string;
  dir: string;
}

/**
 * What is wrong with a machine at the end of the demo (nothing: it ended as expected, user
 * data intact, and an installed one runs the image as captured but for its restore report).
 */
export function machineProblems(m: DemoMachineResult): string[] {
  const out: string[] = [];
  if (m.endState !== m.expected) out.push(`${m.endState}, expected ${m.expected}`);
  if (!m.userDataIntact) out.push('user data changed');
  if (m.endState === 'installed') {
    if (m.imageId !== m.expectedImageId)
      out.push(`runs image ${m.imageId ?? 'none'}, expected ${m.expectedImageId}`);
    if (!m.restoreReport) out.push('no restore report');
    const t = m.osTree;
    if (!t) out.push('OS tree not compared');
    else if (t.missing.length + t.added.length + t.changed.length > 0)
      out.push(
        `OS tree differs from the image (${t.missing.length} missing, ${t.added.length} added, ${t.changed.length} changed)`,
      );
  }
  return out;
}

/** The end state the plan leads to under the demo's policies (no answer: install, or wait for consent). */
export function expectedEnd(plan: UserPlan, fault?: MachineFault | 'corrupt-dp'): EndState {
  if (fault && plan !== 'decline' && plan !== 'consent-none') return 'failed';
  return plan === 'decline' ? 'declined' : plan === 'consent-none' ? 'not-installed' : 'installed';
}

const needsConsent = (plan: UserPlan) => plan.startsWith('consent-');

const MARKER = '.reimage-lab-demo';

/** The checkout this module runs from (dist/src/lab/ → root). */
function checkoutRoot(): string {
  return path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
}

// ------------------------------------------------------------------------------- the lab

export interface DemoSite {
  name: string;
  dp: LabDp;
  link: Link;
  enrollmentToken: string;
}

export interface DemoMachine {
  name: string;
  site: string;
  dir: string;
  disk: string;
  plan: UserPlan;
  via: DemoVia;
  /** The fault planted on the machine or its site's DP, if any. */
  fault?: MachineFault | 'corrupt-dp';
  before: UserDataSnapshot;
}

/** Where serverless machines read their advertisement and drop their status. */
export interface DemoShare {
  /** The published folder (a content store); `status/` in it is the drop folder. */
  dir: string;
  drop: string;
  /** The publishing key (kept outside the share). */
  key: KeyObject;
  publicKeyPem: string;
}

/** The prepared lab: server, sites, images, packages, machines (not yet booted). */
export interface DemoLab {
  dir: string;
  server: RunningServer;
  api: ApiClient;
  sites: DemoSite[];
  images: DemoImages;
  versions: { old: string; new: string };
  machines: DemoMachine[];
  /** The serverless machines' folder, when there are any. */
  share?: DemoShare;
  /** Creates the advertisement (after the user data was hashed). */
  advertise(): Promise<void>;
  /** The settings document the demo's packages use (JSON). */
  settings: Record<string, unknown>;
  close(): Promise<void>;
}

/** Builds everything up to the advertisement. Always `close()` the result. */
export async function prepareDemo(o: DemoOptions): Promise<DemoLab> {
  const log = o.log ?? (() => {});
  const dir = path.resolve(o.dir);
  const count = o.machines ?? 12;
  const siteNames = o.sites ?? ['paris', 'lyon'];
  const versions = o.versions ?? { old: '1.0.0', new: '1.1.0' };
  const countdown = o.countdownSeconds ?? 20;
  const later = o.laterSeconds ?? 8;
  if (!Number.isSafeInteger(count) || count < 1 || count > 500)
    throw new ReimageError('INVALID_ARGUMENT', `--machines must be 1-500, not ${count}`);
  if (siteNames.length === 0 || siteNames.some((s) => !/^[a-z][a-z0-9-]{0,30}$/.test(s)))
    throw new ReimageError('INVALID_ARGUMENT', `site names must be lower-case words`);
  const siteFaults = o.siteFaults ?? {};
  for (const s of Object.keys(siteFaults))
    if (!siteNames.includes(s))
      throw new ReimageError('INVALID_ARGUMENT', `site fault for ${s}, which is not a site`);
  const siteOf = o.siteOf ?? ((i: number) => siteNames[i % siteNames.length]!);
  for (let i = 0; i < count; i++)
    if (!siteNames.includes(siteOf(i)))
      throw new ReimageError('INVALID_ARGUMENT', `machine ${i} is at ${siteOf(i)}, not a site`);
  const planOf = o.plan ?? ((i: number) => USER_PLANS[i % USER_PLANS.length]!);
  const viaOf = machineVia(count, o.opaque ?? [], o.serverless ?? [], planOf);
  prepareWorkFolder(dir);

  const closers: Array<() => Promise<void> | void> = [];
  const close = async () => {
    for (const c of closers.reverse()) {
      try {
        await c();
      } catch {
        // closing the rest matters more
      }
    }
  };
  try {
    // ---- agent bundles and the trees they go into
    const checkout = o.checkout ?? checkoutRoot();
    const bundles = path.join(dir, 'bundles');
    fs.mkdirSync(bundles, { recursive: true });
    const oldBundle = path.join(bundles, `reimage-agent-${versions.old}.bundle`);
    const newBundle = path.join(bundles, `reimage-agent-${versions.new}.bundle`);
    buildAgentBundle({ root: checkout, version: versions.old, out: oldBundle });
    buildAgentBundle({ root: checkout, version: versions.new, out: newBundle });
    log(`agent bundles ${versions.old} and ${versions.new} built`);

    const serverDir = path.join(dir, 'server');
    const library = ContentStore.open(path.join(serverDir, 'library'), { create: true });
    const trees = path.join(dir, 'trees');
    const v1Tree = path.join(trees, 'model-v1');
    await makeModelTree(v1Tree, oldBundle);
    const v2Tree = path.join(trees, 'model-v2');
    fs.cpSync(v1Tree, v2Tree, {
      recursive: true,
      verbatimSymlinks: true,
      preserveTimestamps: true,
    });
    const changes = changeTree(v2Tree);
    installBundle(v2Tree, newBundle);
    const peTree = path.join(trees, 'pe');
    fs.mkdirSync(peTree, { recursive: true });
    fs.copyFileSync(newBundle, path.join(peTree, 'agent.bundle'));
    const props = { os: 'debian', version: '12', arch: 'amd64' };
    const v1 = await captureImage({
      source: v1Tree,
      store: library,
      name: 'lab-desktop-v1',
      description: `lab model, client ${versions.old}`,
      properties: props,
    });
    const v2 = await captureImage({
      source: v2Tree,
      store: library,
      name: 'lab-desktop-v2',
      description: `lab model changed (${changes.changed} changed, ${changes.added} added, ${changes.removed} removed), client ${versions.new}`,
      properties: props,
    });
    const pe = await captureImage({
      source: peTree,
      store: library,
      name: 'reimage-pe',
      description: `PE with agent ${versions.new}`,
      properties: { arch: 'amd64' },
    });
    const images: DemoImages = { v1: v1.record.id, v2: v2.record.id, pe: pe.record.id };
    if (viaOf.includes('opaque')) {
      // The same v2, as a third-party file would bring it: a tar.zst stored as is (opaque).
      const registry = await loadFormats();
      const file = path.join(dir, 'opaque', 'lab-desktop-v2.tar.zst');
      fs.mkdirSync(path.dirname(file), { recursive: true });
      await exportImage({
        store: library,
        registry,
        image: images.v2,
        format: 'tar.zst',
        out: file,
      });
      const { record } = await importFile({
        store: library,
        registry,
        file,
        name: 'lab-desktop-v2-tarzst',
        format: 'tar.zst',
        opaque: true,
        description: `lab model v2 as an opaque tar.zst file, client ${versions.new}`,
        properties: (base) => setProperties(base, props),
      });
      images.opaque = record.id;
      log(
        `v2 exported as ${path.relative(dir, file)} (${fs.statSync(file).size} bytes) and imported opaque: ${record.id.slice(0, 12)}`,
      );
    }
    log(
      `images captured: v1 ${images.v1.slice(0, 12)}, v2 ${images.v2.slice(0, 12)} ` +
        `(${changes.changed} files changed, ${changes.added} added, ${changes.removed} removed), PE ${images.pe.slice(0, 12)}`,
    );

    // ---- the server (registers the library's images at start)
    const server = await startServer({
      dataDir: serverDir,
      host: '127.0.0.1',
      port: 0,
      insecureHttp: true,
      logger: false,
    });
    closers.push(() => server.close());
    const password = fs.readFileSync(path.join(serverDir, 'initial-admin-password'), 'utf8').trim();
    const anon = new ApiClient({ server: server.url });
    const login = await anon.request<{ token: string }>('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password },
    });
    anon.close();
    const api = new ApiClient({ server: server.url, token: login.token });
    closers.push(() => api.close());
    log(`server ${server.url} (SQLite in ${serverDir}); logged in as admin`);

    // ---- sites: a DP behind a link each
    const sites: DemoSite[] = [];
    for (const [i, name] of siteNames.entries()) {
      const writer = { username: 'replicator', password: randomBytes(18).toString('base64url') };
      const dp = await startLabDp({ root: path.join(dir, 'dps', name), writer });
      closers.push(() => dp.close());
      const link = await startLink({
        target: { host: '127.0.0.1', port: dp.port },
        rateBitsPerSec: o.link?.rateBitsPerSec ?? 40_000_000,
        latencyMs: o.link?.latencyMs ?? 20,
        seed: i + 1,
      });
      closers.push(() => link.close());
      await api.request('POST', '/api/v1/distribution-points', {
        body: {
          name: `dp-${name}`,
          address: link.url,
          site: name,
          boundaries: [`10.${100 + i}.0.0/16`],
          credentials: writer,
        },
      });
      const { token } = await api.request<{ token: string }>('POST', '/api/v1/enrollment-tokens', {
        body: { site: name, uses: count, expiresInHours: 24 },
      });
      sites.push({ name, dp, link, enrollmentToken: token });
      log(`site ${name}: DP ${dp.url} behind link ${link.url}`);
    }

    // ---- packages, replicated through the server's API (over the links)
    const settings = {
      apiVersion: 'reimage/v1',
      kind: 'DeploymentSettings',
      options: {
        requireUserPermission: false,
        allowDecline: true,
        postponement: { allowed: true, maximum: `${later + 30}s` },
        whenNoAnswer: 'install',
      },
      stateStore: { type: 'local', encrypt: true },
      rollback: { retainDays: 0 },
      prestage: { enabled: true },
      // A site whose DP is broken must not be rescued by another site's DP.
      ...(Object.keys(siteFaults).length > 0 ? { content: { fallback: false } } : {}),
    };
    const pkg = (
      name: string,
      version: string,
      imageId: string,
      withPe: boolean,
      format: 'native' | 'opaque' = 'native',
    ) => ({
      definition: JSON.stringify({
        apiVersion: 'reimage/v1',
        kind: 'PackageDefinition',
        name,
        version,
        description: `lab demo: ${name}`,
        image: { id: imageId },
        ...(format === 'opaque' ? { format } : {}),
        ...(withPe ? { pe: { name: 'reimage-pe' } } : {}),
      }),
      settings: JSON.stringify(settings),
    });
    await api.request('POST', '/api/v1/packages', {
      body: pkg('lab-desktop', '2.0', images.v2, true),
    });
    // The same image for the machines whose users must consent: nothing installs without a yes.
    await api.request('POST', '/api/v1/packages', {
      body: {
        ...pkg('lab-desktop-consent', '2.0', images.v2, true),
        settings: JSON.stringify({
          ...settings,
          options: { ...settings.options, requireUserPermission: true, whenNoAnswer: 'postpone' },
        }),
      },
    });
    // The PE is content too: its own package puts it on the DPs beside the image.
    await api.request('POST', '/api/v1/packages', {
      body: pkg('reimage-pe', versions.new, images.pe, false),
    });
    const dpNames = sites.map((s) => `dp-${s.name}`);
    if (images.opaque)
      await api.request('POST', '/api/v1/packages', {
        body: pkg('lab-desktop-opaque', '2.0', images.opaque, true, 'opaque'),
      });
    const distributed = [
      'lab-desktop@2.0',
      'lab-desktop-consent@2.0',
      `reimage-pe@${versions.new}`,
      ...(images.opaque ? ['lab-desktop-opaque@2.0'] : []),
    ];
    for (const p of distributed)
      await api.request('POST', `/api/v1/packages/${encodeURIComponent(p)}/distribute`, {
        body: { distributionPoints: dpNames },
      });
    await waitForDistribution(api, distributed, o.signal);
    log(`packages ${distributed.join(', ')} replicated to ${dpNames.join(', ')}`);
    for (const site of sites)
      if (siteFaults[site.name] === 'corrupt-dp')
        log(`site ${site.name}: ${corruptPacks(site.dp.root)} packs corrupted on dp-${site.name}`);

    // ---- the serverless machines' share: a folder and a publishing key of its own
    let share: DemoShare | undefined;
    if (viaOf.includes('serverless')) {
      const { privateKey, publicKey } = generateKeyPairSync('ed25519');
      const shareDir = path.join(dir, 'share');
      // Made now (an empty content store and its drop folder): a machine whose location is
      // missing takes it for a share not mounted.
      ContentStore.open(shareDir, { create: true });
      fs.mkdirSync(path.join(shareDir, 'status'), { recursive: true });
      fs.writeFileSync(
        path.join(dir, 'share-key.pem'),
        privateKey.export({ format: 'pem', type: 'pkcs8' }),
        { mode: 0o600 },
      );
      share = {
        dir: shareDir,
        drop: path.join(shareDir, 'status'),
        key: privateKey,
        publicKeyPem: publicKey.export({ format: 'pem', type: 'spki' }).toString(),
      };
    }

    // ---- machines
    const machines: DemoMachine[] = [];
    const atSite = new Map<string, number>();
    for (let i = 0; i < count; i++) {
      const siteIndex = siteNames.indexOf(siteOf(i));
      const site = sites[siteIndex]!;
      const k = (atSite.get(site.name) ?? 0) + 1;
      atSite.set(site.name, k);
      const name = `pc-${site.name}-${String(k).padStart(2, '0')}`;
      const mdir = path.join(dir, 'machines', name);
      const fault = o.machineFaults?.(i);
      const m = await createLabMachine({
        dir: mdir,
        name,
        site: site.name,
        agentBundle: oldBundle,
        ip: `10.${100 + siteIndex}.0.${10 + k}`,
        tree: { seed: 100 + i, users: o.users ?? 2, scale: 'small' },
        ...(fault === 'small-disk' ? { diskBytes: 1024 ** 2 } : {}),
        ...(fault === 'wrong-arch' ? { arch: 'arm64' } : {}),
      });
      if (fault === 'wrong-os') plantFedora(m.disk);
      if (viaOf[i] === 'serverless')
        configureClient(m.disk, {
          serverless: { location: share!.dir, publicKey: share!.publicKeyPem },
        });
      else configureClient(m.disk, { server: server.url, site: site.name }, site.enrollmentToken);
      markApplied(m.disk, images.v1);
      const siteFault = siteFaults[site.name];
      machines.push({
        name,
        site: site.name,
        dir: mdir,
        disk: m.disk,
        plan: planOf(i),
        via: viaOf[i]!,
        ...(fault || siteFault ? { fault: fault ?? siteFault } : {}),
        before: hashUserData(m.disk, defaults.osPaths),
      });
    }
    log(
      `${count} lab machines created, ${machines.reduce((n, m) => n + Object.keys(m.before).length, 0)} user files hashed`,
    );

    const namesOf = (pick: (m: DemoMachine) => boolean) => machines.filter(pick).map((m) => m.name);
    const nameList = (names: string[]) => names.map((n) => JSON.stringify(n)).join(', ');
    const message = 'Your computer moves to the new lab desktop. Save your work.';
    /** A collection of exactly these machines, and an advertisement to it. */
    const advertiseTo = async (
      names: string[],
      collection: { name: string; description: string },
      ad: { name: string; package: string; policy: Record<string, unknown> },
    ) => {
      await api.request('POST', '/api/v1/collections', {
        body: { ...collection, rule: `name in [${nameList(names)}]` },
      });
      await api.request('POST', '/api/v1/advertisements', {
        body: { ...ad, collection: collection.name },
      });
    };
    const advertise = async () => {
      const consent = namesOf((m) => needsConsent(m.plan));
      // The opaque and serverless machines have advertisements of their own.
      const excluded = [...consent, ...namesOf((m) => m.via !== 'server')];
      const sitesRule = `site in [${nameList(siteNames)}]`;
      await api.request('POST', '/api/v1/collections', {
        body: {
          name: 'lab-machines',
          description:
            'every machine of the lab demo (but those that ask for consent, and the opaque and serverless ones)',
          rule:
            excluded.length > 0
              ? `${sitesRule} and name not in [${nameList(excluded)}]`
              : sitesRule,
        },
      });
      if (consent.length > 0) {
        await advertiseTo(
          consent,
          { name: 'lab-consent', description: 'lab machines whose users must consent' },
          {
            name: 'lab-desktop-consent-rollout',
            package: 'lab-desktop-consent@2.0',
            policy: { countdown: `${countdown}s` },
          },
        );
        log(
          `advertisement lab-desktop-consent-rollout: ${consent.length} machine(s), permission required, no answer postpones`,
        );
      }
      await api.request('POST', '/api/v1/advertisements', {
        body: {
          name: 'lab-desktop-rollout',
          package: 'lab-desktop@2.0',
          collection: 'lab-machines',
          policy: { countdown: `${countdown}s`, message },
          ...(o.rollout ? { schedule: { ...o.rollout, activeWave: 1 } } : {}),
        },
      });
      log(
        `advertisement lab-desktop-rollout: countdown ${countdown} s, later up to ${later + 30} s, decline allowed, no answer installs`,
      );
    };

    /** The opaque machines' and the serverless machines' advertisements (after the main one). */
    const advertiseOthers = async () => {
      const policy = { countdown: `${countdown}s`, message };
      const opaque = namesOf((m) => m.via === 'opaque');
      if (opaque.length > 0) {
        await advertiseTo(
          opaque,
          {
            name: 'lab-opaque',
            description: 'lab machines deployed from the opaque tar.zst package',
          },
          { name: 'lab-desktop-opaque-rollout', package: 'lab-desktop-opaque@2.0', policy },
        );
        log(
          `advertisement lab-desktop-opaque-rollout (opaque tar.zst image): ${opaque.join(', ')}`,
        );
      }
      const serverless = namesOf((m) => m.via === 'serverless');
      if (serverless.length > 0 && share) {
        // Nobody in it enrolled: the publication names the machines, as `--machine NAME`.
        await advertiseTo(
          serverless,
          {
            name: 'lab-serverless',
            description: 'lab machines deployed serverless (published to a folder)',
          },
          { name: 'lab-desktop-serverless', package: 'lab-desktop@2.0', policy },
        );
        const publication = await api.request<Publication>(
          'GET',
          '/api/v1/advertisements/lab-desktop-serverless/publication',
        );
        const r = await publishAdvertisement({
          publication,
          from: [library.root],
          to: share.dir,
          key: share.key,
          machines: serverless,
        });
        log(
          `advertisement lab-desktop-serverless published to ${path.relative(dir, share.dir)}/ (signed; ${r.copy.filesCopied} files copied): ${serverless.join(', ')}`,
        );
      }
    };

    const lab: DemoLab = {
      dir,
      server,
      api,
      sites,
      images,
      versions,
      machines,
      ...(share ? { share } : {}),
      settings,
      advertise: async () => {
        await (o.advertise ? o.advertise(lab) : advertise());
        await advertiseOthers();
      },
      close,
    };
    return lab;
  } catch (e) {
    await close();
    throw e;
  }
}

/** The work folder: created, or emptied when an earlier demo left it (never another folder). */
function prepareWorkFolder(dir: string): void {
  if (fs.existsSync(dir) && fs.readdirSync(dir).length > 0) {
    if (!fs.existsSync(path.join(dir, MARKER)))
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `${dir} is not empty and holds no earlier demo: give an empty or new folder with --dir`,
      );
    for (const e of fs.readdirSync(dir))
      fs.rmSync(path.join(dir, e), { recursive: true, force: true });
  }
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, MARKER),
    'reimage lab demo work folder: emptied by the next demo\n',
  );
  // The machines' disks are other computers: a package.json of the checkout above them (the
  // default folder is ./lab-data/demo, "type": "module") must not decide how Node loads the
  // agent bundles on them (docs/lab.md, "Limits").
  fs.writeFileSync(
    path.join(dir, 'package.json'),
    JSON.stringify(
      { private: true, description: 'reimage lab demo work folder', type: 'commonjs' },
      null,
      2,
    ) + '\n',
  );
}

/**
 * Flips one byte in the middle of every pack file of a DP's folder: the DP still answers every
 * request, with content whose hashes no longer match. Returns how many packs it changed.
 */
function corruptPacks(root: string): number {
  let n = 0;
  const packs = path.join(root, 'packs');
  if (!fs.existsSync(packs)) return 0;
  for (const e of fs.readdirSync(packs, { recursive: true, withFileTypes: true })) {
    if (!e.isFile() || !e.name.endsWith('.pack')) continue;
    const file = path.join(e.parentPath, e.name);
    const fd = fs.openSync(file, 'r+');
    try {
      const size = fs.fstatSync(fd).size;
      const at = Math.floor(size / 2);
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, at);
      b[0] = b[0]! ^ 0xff;
      fs.writeSync(fd, b, 0, 1, at);
      n++;
    } finally {
      fs.closeSync(fd);
    }
  }
  return n;
}

/** A machine that runs Fedora, not the image's Debian: its os-release says so. */
function plantFedora(disk: string): void {
  for (const f of ['etc/os-release', 'usr/lib/os-release']) {
    const file = path.join(disk, f);
    if (fs.lstatSync(file, { throwIfNoEntry: false })?.isSymbolicLink()) fs.rmSync(file);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=41\n');
  }
}

/** The model computer: a generated Debian 12 tree without users, data or client identity. */
async function makeModelTree(root: string, bundle: string): Promise<void> {
  await makeMachineTree(root, { seed: 7, users: 0, scale: 'small', hostname: 'lab-model' });
  // Only OS paths go into the image: what is not an OS path is the machines' own data.
  const os = new Set(defaults.osPaths.map((p) => p.slice(1)));
  for (const e of fs.readdirSync(root))
    if (!os.has(e)) fs.rmSync(path.join(root, e), { recursive: true, force: true });
  // Generalized: no client identity (each machine has its own, restored in phase 3).
  for (const f of ['client.json', 'credential', 'policy-cache.json', 'enrollment-token'])
    fs.rmSync(path.join(root, 'etc/reimage', f), { force: true });
  installBundle(root, bundle);
}

function installBundle(root: string, bundle: string): void {
  const target = path.join(root, AGENT_BUNDLE_PATH);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.rmSync(path.join(path.dirname(target), 'run'), { recursive: true, force: true });
  fs.copyFileSync(bundle, target);
  fs.chmodSync(target, 0o755);
}

/**
 * v2: files of /usr and /boot changed (every 4th), removed (every 7th) and added (a few), a
 * release file in /etc. The agent's own folder is left to installBundle.
 */
function changeTree(root: string): { changed: number; added: number; removed: number } {
  const files = ['usr', 'boot']
    .flatMap((d) =>
      fs
        .readdirSync(path.join(root, d), { recursive: true, withFileTypes: true })
        .filter((e) => e.isFile())
        .map((e) => path.join(e.parentPath, e.name)),
    )
    .filter((f) => !f.startsWith(path.join(root, 'usr/lib/reimage')))
    .sort();
  let changed = 0;
  let removed = 0;
  for (const [i, f] of files.entries()) {
    if (i % 7 === 3) {
      fs.rmSync(f);
      removed++;
    } else if (i % 4 === 1) {
      fs.appendFileSync(f, `\n# changed in the lab desktop v2 (${i})\n`);
      changed++;
    }
  }
  const added = path.join(root, 'usr/share/lab-desktop');
  fs.mkdirSync(added, { recursive: true });
  for (let i = 0; i < 6; i++)
    fs.writeFileSync(
      path.join(added, `release-note-${i}.txt`),
      `lab desktop 2.0, note ${i}\n`.repeat(200 + i * 50),
    );
  fs.writeFileSync(path.join(root, 'etc/lab-desktop-release'), 'LAB_DESKTOP_VERSION=2.0\n');
  return { changed, added: 7, removed };
}

/** How each machine gets its deployment, from the options' indexes (checked). */
function machineVia(
  count: number,
  opaque: readonly number[],
  serverless: readonly number[],
  planOf: (i: number) => UserPlan,
): DemoVia[] {
  const via: DemoVia[] = Array.from({ length: count }, () => 'server');
  for (const [kind, list] of [
    ['opaque', opaque],
    ['serverless', serverless],
  ] as const)
    for (const i of list) {
      if (!Number.isSafeInteger(i) || i < 0 || i >= count)
        throw new ReimageError(
          'INVALID_ARGUMENT',
          `${kind} machine ${i} is not one of 0-${count - 1}`,
        );
      if (via[i] !== 'server')
        throw new ReimageError('INVALID_ARGUMENT', `machine ${i} cannot be ${via[i]} and ${kind}`);
      if (needsConsent(planOf(i)))
        throw new ReimageError(
          'INVALID_ARGUMENT',
          `${kind} machine ${i} has plan ${planOf(i)}: its package asks for no consent`,
        );
      via[i] = kind;
    }
  return via;
}

/**
 * Writes the machine's client configuration. The generated tree holds an identity from
 * elsewhere: its credential, policy cache and token go. A machine of a server gets its site's
 * enrollment token and enrolls afresh; a serverless one (`serverless: {location, publicKey}`,
 * no token) never enrolls: its client picks its GUID at the first run.
 */
function configureClient(
  disk: string,
  config: Record<string, unknown>,
  enrollmentToken?: string,
): void {
  const etc = path.join(disk, 'etc/reimage');
  fs.mkdirSync(etc, { recursive: true, mode: 0o750 });
  for (const f of ['credential', 'policy-cache.json', 'enrollment-token'])
    fs.rmSync(path.join(etc, f), { force: true });
  fs.writeFileSync(
    path.join(etc, 'client.json'),
    JSON.stringify({ ...config, pollSeconds: 2 }, null, 2) + '\n',
  );
  if (enrollmentToken)
    fs.writeFileSync(path.join(etc, 'enrollment-token'), `${enrollmentToken}\n`, { mode: 0o600 });
}

/**
 * The machine runs v1, as if reimage had deployed it: the marker the new client writes after a
 * success (`/.reimage/applied.json`), which the client reports as its applied image.
 */
function markApplied(disk: string, imageId: string): void {
  const kept = path.join(disk, '.reimage');
  fs.mkdirSync(kept, { recursive: true, mode: 0o700 });
  fs.writeFileSync(
    path.join(kept, 'applied.json'),
    JSON.stringify({ imageId, package: 'lab-desktop@1.0', at: new Date().toISOString() }, null, 2) +
      '\n',
  );
}

async function waitForDistribution(
  api: ApiClient,
  packages: string[],
  signal?: AbortSignal,
): Promise<void> {
  for (;;) {
    let pending = 0;
    for (const p of packages) {
      const { items } = await api.request<{
        items: Array<{ state: string; dpName: string; error: string | null }>;
      }>('GET', `/api/v1/packages/${encodeURIComponent(p)}/distribution`);
      for (const d of items) {
        if (d.state === 'failed')
          throw new ReimageError(
            'DP_WRITE_FAILED',
            `replication of ${p} to ${d.dpName} failed: ${d.error ?? 'unknown error'}`,
          );
        if (d.state !== 'done') pending++;
      }
    }
    if (pending === 0) return;
    await sleep(250, undefined, { signal });
  }
}

// ------------------------------------------------------------------------------- the run

interface TimelineItem {
  seq: number;
  messageId: number;
  advertisementId?: string | null;
  text: string;
  properties: Record<string, unknown>;
}

interface ServerMachine {
  id: string;
  name: string;
  appliedImageId: string | null;
  clientVersion: string | null;
}

/** The end state a timeline shows, if any. */
export function endStateOf(items: readonly TimelineItem[], plan?: UserPlan): EndState | undefined {
  const ids = new Set(items.map((i) => i.messageId));
  if (ids.has(5003)) return 'installed';
  if (ids.has(6001)) return 'rolled-back';
  if (ids.has(9000)) return 'failed';
  if (ids.has(2004)) return 'declined';
  const noAnswer = items.filter((i) => i.messageId === 2005).at(-1);
  if (noAnswer && /declin/i.test(String(noAnswer.properties['outcome'] ?? ''))) return 'declined';
  // Consent required and nobody answered twice in a row: it waits, and nothing was installed.
  const waited = items.filter(
    (i) => i.messageId === 2005 && /postpon/i.test(String(i.properties['outcome'] ?? '')),
  );
  if (plan && needsConsent(plan) && waited.length >= 2 && !ids.has(3000)) return 'not-installed';
  return undefined;
}

/**
 * Whether the machine waits for a wave of an advertisement whose rollout halted (its failure
 * threshold was crossed): its last message says "waiting-for-wave" and nothing started.
 * `halted` caches the advertisements' summaries for one round.
 */
async function heldByRollout(
  api: ApiClient,
  items: readonly TimelineItem[],
  halted: Map<string, boolean>,
): Promise<boolean> {
  const last = items.at(-1);
  if (last?.messageId !== 2010 || last.properties['state'] !== 'waiting-for-wave') return false;
  if (items.some((i) => i.messageId >= 3000)) return false;
  const ad = last.advertisementId;
  if (!ad) return false;
  if (!halted.has(ad)) {
    const summary = await api.request<{ halted: boolean }>(
      'GET',
      `/api/v1/status/advertisements/${encodeURIComponent(ad)}/summary`,
    );
    halted.set(ad, summary.halted);
  }
  return halted.get(ad) === true;
}

/** What the machine is doing, from its last status message. */
export function phaseOf(last: number | undefined): string {
  if (last === undefined) return 'booting';
  if (last === 5003) return 'done';
  if (last >= 9000) return 'failed';
  if (last >= 6000) return 'rollback';
  if (last >= 5000) return 'phase 3 restore';
  if (last >= 4000) return 'phase 2 PE';
  if (last >= 3000) return 'phase 1 prepare';
  if (last >= 2000) return 'notification';
  return 'enrolled';
}

/** Runs the whole demo: prepare, advertise, boot every machine, follow them to the end. */
export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const started = Date.now();
  const log = o.log ?? (() => {});
  if (!o.answer)
    throw new ReimageError(
      'INVALID_ARGUMENT',
      'the demo needs the notification page (answerNotification) to answer for its users',
    );
  const answer = o.answer;
  const lab = await prepareDemo(o);
  const power = new AbortController();
  const stopAll = () => power.abort();
  o.signal?.addEventListener('abort', stopAll);
  try {
    const timeoutAt = started + (o.timeoutMs ?? 15 * 60_000);
    const state = lab.machines.map((m) => ({
      m,
      power: new AbortController(),
      firmware: undefined as Promise<FirmwareResult | Error> | undefined,
      halted: undefined as Error | undefined,
      poweredOff: false,
      serverId: undefined as string | undefined,
      items: [] as TimelineItem[],
      endState: undefined as EndState | undefined,
      settledAt: 0,
      inventory: undefined as ServerMachine | undefined,
      answered: new Set<string>(),
      answers: 0,
      boots: 0,
    }));
    setMaxListeners(state.length + 10, power.signal);
    for (const s of state) {
      power.signal.addEventListener('abort', () => s.power.abort());
      const firmware: FirmwareOptions = {
        machine: s.m.dir,
        signal: s.power.signal,
        powerCycleDelayMs: 500,
        loopGuard: { boots: 20, windowMs: 60_000 },
        ...(o.agentEnv ? { env: o.agentEnv } : {}),
      };
      s.firmware = (
        o.firmware === 'in-process' ? runFirmware(firmware) : firmwareProcess(firmware)
      ).then(
        (r) => {
          s.poweredOff = true;
          s.boots = r.boots.length;
          return r;
        },
        (e: unknown) => {
          s.halted = e as Error;
          s.poweredOff = true;
          log(`${s.m.name}: halted: ${(e as Error).message}`);
          return e as Error;
        },
      );
    }
    log(`${state.length} machines powered on`);
    // The administrator advertises to machines the server knows: once every machine enrolled
    // (or halted), so that the collection, and waves counted over it, hold them all from the
    // first poll on.
    for (;;) {
      if (o.signal?.aborted) throw new ReimageError('CANCELLED', 'the demo was stopped');
      const { items } = await lab.api.request<{ items: ServerMachine[] }>(
        'GET',
        '/api/v1/machines',
      );
      const known = new Set(items.map((x) => x.name));
      // A serverless machine never enrolls: the server learns of it from its drop files.
      const waiting = state.filter((s) => s.m.via !== 'serverless');
      if (waiting.every((s) => known.has(s.m.name) || s.halted) || Date.now() > timeoutAt) break;
      await sleep(500);
    }
    log(`every machine enrolled${lab.share ? ' (but the serverless ones)' : ''}`);
    await lab.advertise();
    // The serverless machines' status: the drop folder imported as `reimage status import` does.
    const importDrop = async () => {
      if (!lab.share) return;
      const r = await lab.api.request<{
        files: number;
        machinesCreated: string[];
        rejected: Array<{ file: string; code: string; message: string }>;
      }>('POST', '/api/v1/status/import', { body: { folder: lab.share.drop } });
      for (const g of r.machinesCreated) log(`status import: serverless machine ${g} recorded`);
      for (const x of r.rejected) log(`status import: ${x.file} rejected: ${x.code} ${x.message}`);
    };

    // The simulated users and the progress, until every machine is done.
    const halted = new Map<string, boolean>(); // advertisement id → its rollout halted
    for (;;) {
      if (o.signal?.aborted) throw new ReimageError('CANCELLED', 'the demo was stopped');
      if (state.some((s) => s.m.via === 'serverless' && !s.power.signal.aborted))
        await importDrop();
      const servers = await lab.api.request<{ items: ServerMachine[] }>('GET', '/api/v1/machines');
      halted.clear();
      for (const s of state) {
        if (s.endState && s.power.signal.aborted) continue;
        // The user: answers each new notification by the plan.
        await userTurn(s, answer, o.laterSeconds ?? 8, log);
        const sm = servers.items.find((x) => x.name === s.m.name);
        if (sm) {
          s.serverId = sm.id;
          s.inventory = sm;
          const { items } = await lab.api.request<{ items: TimelineItem[] }>(
            'GET',
            `/api/v1/machines/${sm.id}/timeline`,
          );
          s.items = items;
        }
        if (s.halted && !s.endState) s.endState = 'halted';
        const held = await heldByRollout(lab.api, s.items, halted);
        const end = s.endState ?? endStateOf(s.items, s.m.plan) ?? (held ? 'held' : undefined);
        if (end && !s.endState) {
          s.endState = end;
          s.settledAt = Date.now();
          log(`${s.m.name}: ${end} (plan ${s.m.plan})`);
        }
        if (s.endState && !s.power.signal.aborted && settled(s, lab)) {
          s.power.abort();
        }
      }
      o.onProgress?.(
        state.map((s) => ({
          name: s.m.name,
          site: s.m.site,
          plan: s.m.plan,
          phase: s.endState ?? phaseOf(s.items.at(-1)?.messageId),
          lastStatus: s.items.at(-1)?.text ?? (s.serverId ? 'enrolled' : 'booting'),
          statusMessages: s.items.length,
          ...(s.endState ? { endState: s.endState } : {}),
        })),
      );
      if (state.every((s) => s.endState && s.power.signal.aborted)) break;
      if (Date.now() > timeoutAt) {
        for (const s of state)
          if (!s.endState) {
            s.endState = 'timeout';
            log(`${s.m.name}: timeout (plan ${s.m.plan}, last: ${s.items.at(-1)?.text ?? 'none'})`);
          }
        power.abort();
        break;
      }
      await sleep(1000);
    }
    await Promise.all(state.map((s) => s.firmware));
    await importDrop(); // what the serverless machines dropped before they were powered off

    // Final figures, from the server and from the disks.
    const v2Tree = path.join(lab.dir, 'trees', 'model-v2');
    const wipe = { osPaths: defaults.osPaths, keep: defaults.keep };
    const servers = await lab.api.request<{ items: ServerMachine[] }>('GET', '/api/v1/machines');
    const machines: DemoMachineResult[] = [];
    for (const s of state) {
      const sm = servers.items.find((x) => x.name === s.m.name);
      const items = sm
        ? (
            await lab.api.request<{ items: TimelineItem[] }>(
              'GET',
              `/api/v1/machines/${sm.id}/timeline`,
            )
          ).items
        : [];
      const cmp = compareUserData(s.m.before, hashUserData(s.m.disk, defaults.osPaths));
      // An installed machine runs the image: the whole tree, the restore's paths aside.
      let installed: Pick<DemoMachineResult, 'restoreReport' | 'osTree'> = {};
      const expectedImageId = expectedImageOf(s.m, lab.images);
      if (s.endState === 'installed') {
        const found = findRestoreReport(s.m.disk, expectedImageId);
        const d = compareOsTree(
          s.m.disk,
          v2Tree,
          osTreeExceptions(wipe, found?.report ?? { written: [], notPlaced: [] }),
        );
        installed = {
          restoreReport: found?.path ?? null,
          osTree: { compared: d.compared, missing: d.missing, added: d.added, changed: d.changed },
        };
      }
      machines.push({
        name: s.m.name,
        site: s.m.site,
        plan: s.m.plan,
        via: s.m.via,
        ...(s.m.fault ? { fault: s.m.fault } : {}),
        expected: expectedEnd(s.m.plan, s.m.fault),
        endState: s.endState ?? 'timeout',
        ...reportedBy(s.m, sm, items),
        expectedImageId,
        userDataIntact: cmp.intact,
        statusMessages: items.length,
        userData: {
          files: cmp.files,
          bytes: cmp.bytes,
          missing: cmp.missing.length,
          changed: cmp.changed.length,
          moved: cmp.moved.length,
        },
        guid: sm?.id ?? null,
        diskGuid: diskGuid(s.m.disk),
        boots: s.boots,
        timeline: items.map((i) => ({ seq: i.seq, id: i.messageId })),
        ...installed,
      });
    }
    const result: DemoResult = {
      machines,
      images: lab.images,
      versions: lab.versions,
      ok: machines.every((m) => machineProblems(m).length === 0),
      seconds: (Date.now() - started) / 1000,
      server: lab.server.url,
      dir: lab.dir,
    };
    await o.afterRun?.(lab, result);
    return result;
  } finally {
    power.abort();
    o.signal?.removeEventListener('abort', stopAll);
    await lab.close();
  }
}

/**
 * The firmware as its own process: `reimage lab boot MACHINE --json` of this checkout. Pulling
 * the power (the signal) is a SIGTERM to it, which kills the booted program; a halt is its
 * failure exit.
 */
function firmwareProcess(f: FirmwareOptions): Promise<FirmwareResult> {
  const cli = path.join(checkoutRoot(), 'bin', 'reimage.js');
  const args = [
    cli,
    'lab',
    'boot',
    f.machine,
    '--json',
    '--power-cycle-delay',
    String(f.powerCycleDelayMs ?? 1000),
    ...(f.loopGuard ? ['--max-boots-per-minute', String(f.loopGuard.boots)] : []),
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...f.env },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const stop = () => child.kill('SIGTERM');
    if (f.signal?.aborted) stop();
    else f.signal?.addEventListener('abort', stop, { once: true });
    child.on('error', reject);
    child.on('close', (code) => {
      f.signal?.removeEventListener('abort', stop);
      try {
        if (code === 0) return resolve(JSON.parse(out) as FirmwareResult);
      } catch {
        // not the JSON it prints: a failure
      }
      // A halt (no bootable device, a boot loop): its message is the firmware's last line.
      reject(
        new Error(
          `the firmware of ${f.machine} ended with ${code}: ${err.trim().split('\n').at(-1) ?? ''}`,
        ),
      );
    });
  });
}

function diskGuid(disk: string): string | null {
  try {
    const c = JSON.parse(fs.readFileSync(path.join(disk, 'etc/reimage/client.json'), 'utf8')) as {
      guid?: unknown;
    };
    return typeof c.guid === 'string' ? c.guid : null;
  } catch {
    return null;
  }
}

type RunState = {
  m: DemoMachine;
  items: TimelineItem[];
  endState?: EndState;
  settledAt: number;
  inventory?: ServerMachine;
  answered: Set<string>;
  answers: number;
};

/**
 * How long a machine that reached its end state may take to finish (the cleanup step, the new
 * client's first inventory) before the lab pulls its power anyway. Normally a few seconds; 30 s
 * was too short once under CI load (a fleet machine powered off after 5003, before its
 * cleanup: no restore report, old inventory). A machine cut by this limit fails the lab's
 * checks (machineProblems), it is not hidden.
 */
const SETTLE_MS = 180_000;

/**
 * Whether a machine that reached its end state may be powered off: its deployment is over on
 * the disk (no plan in the kept area) and, when installed, the new client has reported its
 * inventory — or {@link SETTLE_MS} went by.
 */
function settled(s: RunState, lab: DemoLab): boolean {
  if (Date.now() - s.settledAt > SETTLE_MS) return true;
  if (fs.existsSync(path.join(s.m.disk, '.reimage/deployment/plan.json'))) return false;
  if (s.endState !== 'installed') return true;
  const r = reportedBy(s.m, s.inventory, s.items);
  return r.clientVersion === lab.versions.new && r.imageId === expectedImageOf(s.m, lab.images);
}

/** The image an installed machine must run: the opaque copy of v2 for an opaque machine. */
function expectedImageOf(m: DemoMachine, images: DemoImages): string {
  return m.via === 'opaque' && images.opaque ? images.opaque : images.v2;
}

/**
 * The machine's applied image and client version as the server knows them: its inventory; for
 * a serverless machine, which sends no inventory, the last its imported timeline reports (1001
 * and 5003 name the image; 1000, 1001, 5000 and 5003 the client version).
 */
function reportedBy(
  m: DemoMachine,
  inventory: ServerMachine | undefined,
  items: readonly TimelineItem[],
): { imageId: string | null; clientVersion: string | null } {
  if (m.via !== 'serverless')
    return {
      imageId: inventory?.appliedImageId ?? null,
      clientVersion: inventory?.clientVersion ?? null,
    };
  const last = (ids: number[], key: string): string | null => {
    const v = items.findLast(
      (i) => ids.includes(i.messageId) && typeof i.properties[key] === 'string',
    )?.properties[key];
    return typeof v === 'string' ? v : null;
  };
  return {
    imageId: last([1001, 5003], 'image'),
    clientVersion: last([1000, 1001, 5000, 5003], 'clientVersion'),
  };
}

/** The simulated user of one machine: answers a notification it has not answered yet. */
async function userTurn(
  s: RunState,
  answer: AnswerNotification,
  laterSeconds: number,
  log: (line: string) => void,
): Promise<void> {
  if (s.m.plan === 'none' || s.m.plan === 'consent-none' || s.endState) return;
  let text: string;
  try {
    text = fs.readFileSync(path.join(s.m.disk, NOTIFICATION_FILE), 'utf8');
  } catch {
    return; // nothing pending
  }
  const key = notificationKey(text);
  if (s.answered.has(key)) return;
  const choice: UserAnswer =
    s.m.plan === 'decline'
      ? { choice: 'decline' }
      : s.m.plan === 'later' && s.answers === 0
        ? { choice: 'later', until: new Date(Date.now() + laterSeconds * 1000).toISOString() }
        : { choice: 'now' };
  try {
    await answer(s.m.disk, choice, 'web');
  } catch (e) {
    // The notification went away meanwhile (countdown over, or replaced): try the next one.
    log(`${s.m.name}: could not answer (${(e as Error).message})`);
    return;
  }
  s.answered.add(key);
  s.answers++;
  log(
    `${s.m.name}: the user answered ${choice.choice}${choice.until ? ` until ${choice.until}` : ''}`,
  );
}

/** One notification from another: its id when it has one, else its whole text. */
function notificationKey(text: string): string {
  try {
    const j = JSON.parse(text) as { id?: unknown; notificationId?: unknown };
    const id = j.id ?? j.notificationId;
    if (typeof id === 'string' || typeof id === 'number') return String(id);
  } catch {
    // not JSON (yet): the text itself
  }
  return text;
}

// ------------------------------------------------------------------------------- output

/** The progress table: one line per machine (phase, last status). */
export function progressTable(rows: readonly MachineProgress[], width = 120): string[] {
  const name = Math.max(7, ...rows.map((r) => r.name.length));
  const lines = [
    `${'machine'.padEnd(name)}  ${'site'.padEnd(6)}  ${'user'.padEnd(12)}  ${'phase'.padEnd(16)}  msgs  last status`,
  ];
  for (const r of rows) {
    const line = `${r.name.padEnd(name)}  ${r.site.padEnd(6)}  ${r.plan.padEnd(12)}  ${r.phase.padEnd(16)}  ${String(r.statusMessages).padStart(4)}  ${r.lastStatus}`;
    lines.push(line.length > width ? `${line.slice(0, width - 1)}…` : line);
  }
  return lines;
}
