/**
 * The agent bundle: one self-contained, versioned file that a lab machine (or a real one) runs
 * with nothing but `node`. See docs/lab.md ("The agent bundle") and docs/adr/0003-agent-and-lab.md.
 *
 * Layout of the file:
 *
 *   #!/usr/bin/env node
 *   ...a small CommonJS loader (Node built-ins only), with a header object holding the
 *   version, the archive's SHA-256 and size, and the entry module...
 *   /*REIMAGE-ARCHIVE-V1
 *   <the gzip'd tar, byte-stuffed so that it never contains the end of a block comment>
 *   *\/
 *
 * Node parses the whole file as JavaScript, so the archive sits inside a block comment: every
 * 0x2A byte ("*") of the archive is written as 0x2A 0x01, so "*\/" can never occur in it (ASCII
 * bytes always decode as themselves in UTF-8, whatever surrounds them). The overhead is about
 * 0.4 %, against 33 % for base64.
 *
 * The archive mirrors the repository's layout (dist/src/..., node_modules/..., build/Release/
 * reimage_native.node, a package.json named "reimage"), so module resolution and the native
 * addon lookup of src/image/posix.ts work in the extracted tree exactly as in the checkout.
 * Building is deterministic: the same inputs give the same bytes and the same hash.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { isBuiltin } from 'node:module';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import type * as NodeCrypto from 'node:crypto';
import type * as NodeFs from 'node:fs';
import type * as NodeOs from 'node:os';
import type * as NodePath from 'node:path';
import type * as NodeUrl from 'node:url';
import type * as NodeZlib from 'node:zlib';
import { ReimageError } from '../errors.js';

/** The module the loader imports (relative to the archive root); it exports `agentMain(argv)`. */
export const AGENT_ENTRY = 'dist/src/agent/main.js';
/** The agent's native addon, relative to the repository root (and to the archive root). */
export const NATIVE_ADDON = 'build/Release/reimage_native.node';
/** Bundle format version, written in the header and in the archive marker. */
export const BUNDLE_FORMAT = 1;

const MARKER = `\n/*REIMAGE-ARCHIVE-V${BUNDLE_FORMAT}\n`;
const TRAILER = '*/\n';
const STAR = 0x2a;
const STAR_ESCAPE = 0x01;

/**
 * Dependencies of npm packages that are only needed to build or install them (headers,
 * prebuilt-binary downloaders, type declarations), never at run time. zstd-napi lists
 * node-addon-api and prebuild-install as dependencies, for example.
 */
const BUILD_ONLY_PACKAGES = new Set(['node-addon-api', 'nan', 'prebuild-install', 'node-gyp']);

/** Files of npm packages that are never loaded at run time: sources, objects, typings, maps. */
const SKIP_FILE =
  /(Makefile|\.d\.[cm]?ts|\.ts|\.map|\.c|\.cc|\.cpp|\.h|\.hpp|\.o|\.a|\.gyp|\.gypi|\.mk)$/;
const SKIP_DIR = new Set(['node_modules', 'obj.target', '.deps', '.github']);
/** A native package's bundled C sources (zstd-napi's deps/zstd), skipped only where binding.gyp says it is one. */
const NATIVE_SOURCES_DIR = 'deps';

/** Versions become folder names on the machine: keep them plain. */
const VERSION_RE = /^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$/;

export interface BundleOptions {
  /** The repository root: holds package.json ("reimage"), dist/ (built) and node_modules/. */
  root: string;
  version: string;
  /** Where to write the bundle (replaced atomically). */
  out: string;
}

export interface BundleResult {
  out: string;
  version: string;
  /** SHA-256 of the archive (hex), as written in the loader's header. */
  sha256: string;
  /** Size of the bundle file, and of the archive before and after gzip. */
  bytes: number;
  tarBytes: number;
  archiveBytes: number;
  /** Files in the archive, by kind. */
  files: { modules: number; packageFiles: number; native: number; total: number };
  /** npm packages included (name@version). */
  packages: string[];
}

interface ArchiveFile {
  /** Path inside the archive (and relative to the repository root), with "/" separators. */
  name: string;
  source: string;
  executable: boolean;
}

/** Builds the agent bundle from a built checkout (run `npm run build` first). */
export function buildAgentBundle(opts: BundleOptions): BundleResult {
  if (!VERSION_RE.test(opts.version))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `agent version ${JSON.stringify(opts.version)} is not valid: use letters, digits and . + _ - (at most 64), starting with a letter or digit`,
    );
  const root = path.resolve(opts.root);
  const { files, packages, modules } = collectAgentFiles(root);
  const nativeCount = files.filter((f) => f.name.endsWith('.node')).length;
  const manifest = JSON.stringify(
    { name: 'reimage', version: opts.version, type: 'module', private: true },
    null,
    2,
  );
  const tar = writeTar([
    { name: 'package.json', data: Buffer.from(manifest + '\n'), executable: false },
    ...files.map((f) => ({
      name: f.name,
      data: fs.readFileSync(f.source),
      executable: f.executable,
    })),
  ]);
  // Level 9 costs little here (a few MB) and makes every machine's copy smaller.
  const archive = gzipSync(tar, { level: 9 });
  const sha256 = createHash('sha256').update(archive).digest('hex');
  const header = {
    format: BUNDLE_FORMAT,
    version: opts.version,
    sha256,
    archiveBytes: archive.length,
    entry: AGENT_ENTRY,
  };
  const bundle = Buffer.concat([
    Buffer.from(loaderSource(header)),
    Buffer.from(MARKER),
    stuff(archive),
    Buffer.from(TRAILER),
  ]);
  const out = path.resolve(opts.out);
  const tmp = `${out}.tmp-${process.pid}`;
  try {
    fs.writeFileSync(tmp, bundle, { mode: 0o755 });
    fs.renameSync(tmp, out);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `cannot write the bundle to ${out}: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  return {
    out,
    version: opts.version,
    sha256,
    bytes: bundle.length,
    tarBytes: tar.length,
    archiveBytes: archive.length,
    files: {
      modules,
      packageFiles: files.length - modules - nativeCount,
      native: nativeCount,
      total: files.length + 1,
    },
    packages,
  };
}

/**
 * What goes into the archive: the compiled modules reachable from the agent's entry (static
 * and dynamic imports with a literal specifier, and worker scripts named with
 * `new URL('./x.js', import.meta.url)`), the npm packages they import with those packages'
 * run-time dependencies, and the native addons.
 */
export function collectAgentFiles(
  root: string,
  entryModule: string = AGENT_ENTRY,
): {
  files: ArchiveFile[];
  packages: string[];
  modules: number;
} {
  const entry = path.join(root, entryModule);
  if (!fs.existsSync(entry))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${entry} is missing: build the project first (npm run build)`,
    );
  const files = new Map<string, ArchiveFile>();
  const add = (source: string, executable = false) => {
    const name = path.relative(root, source).split(path.sep).join('/');
    if (name.startsWith('../') || path.isAbsolute(name))
      throw new Error(`bug: bundle file ${source} is outside ${root}`);
    if (!files.has(name)) files.set(name, { name, source, executable });
  };

  // 1. Our modules.
  const seen = new Set<string>();
  const queue = [entry];
  const packageRoots: Array<{ name: string; from: string }> = [];
  while (queue.length > 0) {
    const file = queue.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    add(file);
    const text = fs.readFileSync(file, 'utf8');
    for (const spec of moduleSpecifiers(text)) {
      if (spec.startsWith('.') || spec.startsWith('/')) {
        const target = path.resolve(path.dirname(file), spec);
        if (!fs.existsSync(target))
          throw new ReimageError(
            'INVALID_ARGUMENT',
            `${path.relative(root, file)} refers to ${spec}, which does not exist (is the build current?)`,
          );
        queue.push(target);
      } else if (!isBuiltin(spec)) {
        packageRoots.push({ name: packageName(spec), from: path.dirname(file) });
      }
    }
  }
  const modules = files.size;

  // 2. npm packages, and their run-time dependencies.
  const packages = new Map<string, string>(); // dir → name@version
  const pending = [...packageRoots];
  while (pending.length > 0) {
    const { name, from } = pending.pop()!;
    const dir = findPackage(name, from, root);
    if (dir === undefined)
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `the agent imports ${name}, which is not installed (run npm install)`,
      );
    if (packages.has(dir)) continue;
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as {
      version?: string;
      dependencies?: Record<string, string>;
      optionalDependencies?: Record<string, string>;
    };
    packages.set(dir, `${name}@${pkg.version ?? '?'}`);
    addTree(dir, add, fs.existsSync(path.join(dir, 'binding.gyp')));
    for (const dep of Object.keys(pkg.dependencies ?? {})) {
      if (BUILD_ONLY_PACKAGES.has(dep) || dep.startsWith('@types/')) continue;
      pending.push({ name: dep, from: dir });
    }
    for (const dep of Object.keys(pkg.optionalDependencies ?? {})) {
      // An optional dependency that is not installed is not needed here.
      if (findPackage(dep, dir, root) !== undefined) pending.push({ name: dep, from: dir });
    }
  }

  // 3. Our native addon (the packages' own addons came with their trees).
  const addon = path.join(root, NATIVE_ADDON);
  if (!fs.existsSync(addon))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${addon} is missing: build the native addon first (npx node-gyp rebuild)`,
    );
  add(addon, true);

  return {
    files: [...files.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
    packages: [...packages.values()].sort(),
    modules,
  };
}

/**
 * The module specifiers of a compiled ES module: `import … from 'x'`, `export … from 'x'`,
 * `import 'x'`, `import('x')` and `new URL('x', import.meta.url)` (worker scripts). Only
 * literal specifiers can be followed; a computed one (a format plugin's path) is the caller's.
 */
export function moduleSpecifiers(text: string): string[] {
  const out = new Set<string>();
  const patterns = [
    /^\s*(?:import|export)\s[^;]*?\sfrom\s*(['"])([^'"\n]+)\1/gm,
    /^\s*import\s*(['"])([^'"\n]+)\1/gm,
    /\bimport\(\s*(['"])([^'"\n]+)\1\s*\)/g,
    /\bnew URL\(\s*(['"])([^'"\n]+)\1\s*,\s*import\.meta\.url\s*\)/g,
  ];
  for (const re of patterns)
    for (const m of text.matchAll(re)) if (!inComment(text, m.index)) out.add(m[2]!);
  return [...out];
}

/**
 * Whether a match lies in a comment, as tsc leaves them: on a line that starts a comment or
 * continues a doc comment ("*"), or after "//" on its line. Enough for compiled code; a
 * specifier quoted inside a string would still be taken (and fail the build if it is missing).
 */
function inComment(text: string, at: number): boolean {
  const lineStart = text.lastIndexOf('\n', at) + 1;
  const before = text.slice(lineStart, at);
  const lead = before.trimStart();
  return lead.startsWith('*') || lead.startsWith('/*') || before.includes('//');
}

function packageName(spec: string): string {
  const parts = spec.split('/');
  return spec.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
}

/** Node's lookup: node_modules/NAME in `from` and each ancestor, up to the repository root. */
function findPackage(name: string, from: string, root: string): string | undefined {
  let dir = from;
  for (;;) {
    const candidate = path.join(dir, 'node_modules', name);
    // Not realpath'd: the archive keeps the checkout's layout even where node_modules is a link.
    if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (dir === root) return undefined;
    const parent = path.dirname(dir);
    if (parent === dir || !parent.startsWith(root)) return undefined;
    dir = parent;
  }
}

function addTree(
  dir: string,
  add: (file: string, executable?: boolean) => void,
  nativeTop = false,
): void {
  for (const d of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, d.name);
    if (d.isDirectory()) {
      if (!SKIP_DIR.has(d.name) && !(nativeTop && d.name === NATIVE_SOURCES_DIR)) addTree(p, add);
    } else if (d.isFile()) {
      if (!SKIP_FILE.test(d.name)) add(p, (fs.statSync(p).mode & 0o111) !== 0);
    } else if (d.isSymbolicLink()) {
      // Packages from the registry hold no symlinks; a linked package would pull in another tree.
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `${p} is a symbolic link: bundles hold plain files only`,
      );
    }
  }
}

// ---- the archive: a plain ustar writer (pax "path" records for long names) ----

interface TarInput {
  name: string;
  data: Buffer;
  executable: boolean;
}

/** Writes regular files as a ustar archive (owner 0, mtime 0: deterministic). */
export function writeTar(entries: TarInput[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    let name = e.name;
    let prefix = '';
    if (Buffer.byteLength(name) > 100) {
      const split = splitUstarName(name);
      if (split) [prefix, name] = split;
      else {
        const record = paxRecord('path', e.name);
        parts.push(tarHeader('PaxHeader', record.length, '', 'x', false), pad(record));
        name = e.name.slice(-100);
        prefix = '';
      }
    }
    parts.push(tarHeader(name, e.data.length, prefix, '0', e.executable), pad(e.data));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

function splitUstarName(name: string): [string, string] | undefined {
  for (let i = name.indexOf('/'); i >= 0; i = name.indexOf('/', i + 1)) {
    const prefix = name.slice(0, i);
    const rest = name.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(rest) <= 100) return [prefix, rest];
  }
  return undefined;
}

function paxRecord(key: string, value: string): Buffer {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body) + 1;
  while (String(len).length + Buffer.byteLength(body) !== len)
    len = String(len).length + Buffer.byteLength(body);
  return Buffer.from(`${len}${body}`);
}

function tarHeader(
  name: string,
  size: number,
  prefix: string,
  type: string,
  exec: boolean,
): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100);
  h.write(exec ? '0000755\0' : '0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(size.toString(8).padStart(11, '0') + '\0', 124);
  h.write('00000000000\0', 136);
  h.write('        ', 148);
  h.write(type, 156);
  h.write('ustar\0', 257);
  h.write('00', 263);
  h.write(prefix, 345, 155);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  return h;
}

function pad(data: Buffer): Buffer {
  const rest = data.length % 512;
  return rest === 0 ? data : Buffer.concat([data, Buffer.alloc(512 - rest)]);
}

/** Every 0x2A becomes 0x2A 0x01, so the result never contains "*\/". */
export function stuff(data: Buffer): Buffer {
  let stars = 0;
  for (let i = data.indexOf(STAR); i >= 0; i = data.indexOf(STAR, i + 1)) stars++;
  const out = Buffer.alloc(data.length + stars);
  let o = 0;
  let from = 0;
  for (let i = data.indexOf(STAR); i >= 0; i = data.indexOf(STAR, i + 1)) {
    o += data.copy(out, o, from, i + 1);
    out[o++] = STAR_ESCAPE;
    from = i + 1;
  }
  data.copy(out, o, from);
  return out;
}

// ---- the loader ----

interface LoaderHeader {
  format: number;
  version: string;
  sha256: string;
  archiveBytes: number;
  entry: string;
}

/**
 * The loader: plain CommonJS using only Node built-ins, so that `node FILE` runs it wherever
 * the file lies (except below a package.json that says "type": "module": Node then refuses
 * the unknown extension). Kept as a function's source so that it is type-checked and linted
 * with the rest; `loaderMain` is serialized with its header.
 */
function loaderSource(header: LoaderHeader): string {
  return [
    '#!/usr/bin/env node',
    `// reimage agent bundle ${header.version}: a loader (Node built-ins only) followed by its archive`,
    "// (a gzip'd tar). Run it with `node THIS-FILE ARGS`; see docs/lab.md in the reimage sources.",
    "'use strict';",
    `const BUNDLE = ${JSON.stringify(header)};`,
    `(${loaderMain.toString()})(BUNDLE, ${JSON.stringify(MARKER)}, ${JSON.stringify(TRAILER)});`,
    '',
  ].join('\n');
}

/* eslint-disable @typescript-eslint/no-require-imports */
/**
 * Runs inside the bundle (serialized with toString, so it may use only its parameters,
 * `require`, `process` and `__filename`). Verifies the archive, extracts it once into
 * RUN_DIR/agent-VERSION-HASH/ (atomically: into a temporary folder, then a rename), and
 * runs the entry's `agentMain`.
 */
function loaderMain(bundle: LoaderHeader, marker: string, trailer: string): void {
  const fs = require('node:fs') as typeof NodeFs;
  const path = require('node:path') as typeof NodePath;
  const os = require('node:os') as typeof NodeOs;
  const crypto = require('node:crypto') as typeof NodeCrypto;
  const zlib = require('node:zlib') as typeof NodeZlib;
  const url = require('node:url') as typeof NodeUrl;
  const self = __filename;
  const fail = (message: string, code = 1): never => {
    process.stderr.write(`reimage agent bundle ${self}: ${message}\n`);
    process.exit(code);
  };

  // 1. Find and verify the archive.
  const file = fs.readFileSync(self);
  const start = file.indexOf(marker);
  const tail = Buffer.from(trailer);
  if (start < 0 || !file.subarray(file.length - tail.length).equals(tail))
    fail('the file is truncated or is not an agent bundle: refusing to run');
  const stuffed = file.subarray(start + Buffer.byteLength(marker), file.length - tail.length);
  const archive = Buffer.alloc(bundle.archiveBytes);
  let o = 0;
  for (let i = 0; i < stuffed.length; i++) {
    const b = stuffed[i]!;
    if (o >= archive.length) fail('the archive is longer than its header says: refusing to run');
    archive[o++] = b;
    if (b === 0x2a) {
      if (stuffed[i + 1] !== 0x01) fail('the archive is damaged (bad escape): refusing to run');
      i++;
    }
  }
  if (o !== bundle.archiveBytes)
    fail(`the archive has ${o} bytes, its header says ${bundle.archiveBytes}: refusing to run`);
  const actual = crypto.createHash('sha256').update(archive).digest('hex');
  if (actual !== bundle.sha256)
    fail(
      `the archive's SHA-256 is ${actual} but the header says ${bundle.sha256}: ` +
        'the bundle is damaged or was altered; refusing to run. Replace it with a good copy.',
    );

  // 2. Extract it once, atomically.
  const runDir =
    process.env.REIMAGE_AGENT_RUN_DIR || path.join(path.dirname(path.resolve(self)), 'run');
  const name = `agent-${bundle.version}-${bundle.sha256.slice(0, 16)}`;
  let base = runDir;
  try {
    fs.mkdirSync(base, { recursive: true });
    fs.accessSync(base, fs.constants.W_OK);
  } catch {
    // Read-only next to the bundle (a real /usr): fall back to a private temporary folder.
    if (process.env.REIMAGE_AGENT_RUN_DIR)
      fail(`REIMAGE_AGENT_RUN_DIR ${runDir} cannot be created or written`);
    base = path.join(os.tmpdir(), `reimage-agent-run-${process.getuid ? process.getuid() : 0}`);
    fs.mkdirSync(base, { recursive: true, mode: 0o700 });
  }
  const dir = path.join(base, name);
  if (!fs.existsSync(dir)) {
    // Folders of extractions that were killed: remove them when their process is gone.
    for (const entry of fs.readdirSync(base)) {
      const m = /^\.agent-.*\.tmp-(\d+)-[0-9a-f]+$/.exec(entry);
      if (!m) continue;
      let alive = true;
      try {
        process.kill(Number(m[1]), 0);
      } catch (e) {
        alive = (e as { code?: string }).code === 'EPERM';
      }
      if (!alive) fs.rmSync(path.join(base, entry), { recursive: true, force: true });
    }
    const tmp = path.join(
      base,
      `.${name}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`,
    );
    fs.mkdirSync(tmp, { mode: 0o755 });
    const tar = zlib.gunzipSync(archive);
    const dirs = new Set<string>([tmp]);
    let longName: string | undefined;
    for (let p = 0; p + 512 <= tar.length;) {
      const h = tar.subarray(p, p + 512);
      if (h.every((b) => b === 0)) break;
      const field = (at: number, len: number) => {
        const s = h.subarray(at, at + len);
        const z = s.indexOf(0);
        return s.subarray(0, z < 0 ? len : z).toString('utf8');
      };
      const size = parseInt(field(124, 12).trim() || '0', 8);
      const type = field(156, 1) || '0';
      const data = tar.subarray(p + 512, p + 512 + size);
      p += 512 + Math.ceil(size / 512) * 512;
      if (type === 'x') {
        const m = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(data.toString('utf8'));
        longName = m ? m[1] : undefined;
        continue;
      }
      const prefix = field(345, 155);
      const rel = longName ?? (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100));
      longName = undefined;
      if (type !== '0')
        fail(`the archive holds an entry of type ${type} (${rel}): refusing to run`);
      if (rel.startsWith('/') || rel.split('/').includes('..'))
        fail(`the archive holds an unsafe path ${rel}: refusing to run`);
      const target = path.join(tmp, rel);
      const parent = path.dirname(target);
      if (!dirs.has(parent)) {
        fs.mkdirSync(parent, { recursive: true, mode: 0o755 });
        dirs.add(parent);
      }
      const mode = parseInt(field(100, 8), 8) & 0o755;
      const fd = fs.openSync(target, 'wx', mode);
      try {
        fs.writeSync(fd, data);
        // Survive a power loss right after the rename below: data before the name.
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
    for (const d of [...dirs].sort().reverse()) {
      const fd = fs.openSync(d, 'r');
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    }
    try {
      fs.renameSync(tmp, dir);
    } catch (e) {
      // Another start of the same bundle won the race: use its (identical) tree.
      fs.rmSync(tmp, { recursive: true, force: true });
      if (!fs.existsSync(dir)) throw e;
    }
    const fd = fs.openSync(base, 'r');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  }

  // 3. Run the agent from the extracted tree, with its own addon (never one from the environment).
  const g = globalThis as Record<string, unknown>;
  g.__REIMAGE_AGENT_VERSION__ = bundle.version;
  g.__REIMAGE_AGENT_BUNDLE__ = { path: path.resolve(self), sha256: bundle.sha256, root: dir };
  process.env.REIMAGE_NATIVE = path.join(dir, 'build', 'Release', 'reimage_native.node');
  import(url.pathToFileURL(path.join(dir, bundle.entry)).href)
    .then((m: { agentMain: (argv: string[]) => Promise<number> }) =>
      m.agentMain(process.argv.slice(2)),
    )
    .then(
      (code) => process.exit(code),
      (e: unknown) => {
        process.stderr.write(
          `reimage agent ${bundle.version}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
        );
        process.exit(70);
      },
    );
}
/* eslint-enable @typescript-eslint/no-require-imports */
