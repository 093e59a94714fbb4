import { Command, CommanderError } from 'commander';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { ReimageError, errorCodes, isReimageError } from '../errors.js';
import { setProperties } from '../image/capture.js';
import { applyImage } from '../image/apply.js';
import { applyOpaque, exportImage, importFile } from '../image/convert.js';
import { loadFormats } from '../image/formats/registry.js';
import { verifyImage } from '../image/verify.js';
import { diffImages } from '../image/diff.js';
import { collectGarbage } from '../image/gc.js';
import {
  ImageLibrary,
  checkSignature,
  keyIdOf,
  signRecord,
  type ImageRecord,
} from '../image/library.js';
import { formatBytes, progressView } from './output.js';
import { registerCaptureCommand } from './capture-command.js';
import {
  FORMAT_PLUGIN_OPTION,
  cancellable,
  collect,
  openStore,
  out,
  parseProperties,
  pluginPaths,
  readKeyFile,
  summary,
  withCommon,
  type Common,
} from './common.js';
import { registerStatusSummaries } from './status-command.js';
import {
  registerAdminCommands,
  remoteFor,
  remoteImageDelete,
  remoteImageList,
  remoteImageShow,
  withConnection,
} from './admin.js';
import { registerFetchCommand } from './fetch-command.js';
import { registerServerCommand } from './server-command.js';
import { registerStateCommands } from './state-command.js';
import { registerAgentCommands } from './agent-command.js';
import { registerLabCommands } from './lab-command.js';
import { registerUploadCommand } from './upload-command.js';

/**
 * The `reimage` command: `reimage <noun> <verb>`. Only this entry point reads flags and the
 * environment (REIMAGE_STORE); everything below receives its dependencies explicitly.
 */

export function buildProgram(): Command {
  const program = new Command('reimage')
    .description('Capture, package, distribute and deploy operating-system images in place.')
    .version(
      JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8'))
        .version as string,
    )
    .showHelpAfterError()
    // `reimage --version` is the program's; `reimage agent bundle --version V` is the bundle's.
    .enablePositionalOptions()
    .exitOverride();

  const image = program.command('image').description('capture, inspect, apply and verify images');

  registerCaptureCommand(image, { env: process.env });

  withConnection(
    withCommon(
      image.command('list').description('list images (named, and unnamed older versions)'),
    ),
  ).action(async (o: Common) => {
    // On the management server when one is given or configured and no local store is.
    const remote = await remoteFor(o, { env: process.env });
    if (remote) return remoteImageList(remote, o);
    const lib = new ImageLibrary(openStore(o));
    const records = lib.listRecords();
    const names = lib.listNames();
    const rows = records
      .map((r) => ({ ...r, names: names.filter((n) => n.id === r.id).map((n) => n.name) }))
      .sort((a, b) => a.properties.created.localeCompare(b.properties.created));
    out(
      o,
      {
        images: rows.map((r) => ({
          id: r.id,
          names: r.names,
          properties: r.properties,
          stats: r.stats,
          signed: !!r.signature,
        })),
      },
      () =>
        rows.length === 0
          ? 'no images'
          : [
              'ID            NAMES                 OS              FILES    SIZE       CREATED',
              ...rows.map(
                (r) =>
                  `${r.id.slice(0, 12)}  ${(r.names.join(',') || '-').padEnd(20)}  ${[r.properties.osFamily, r.properties.osVersion].filter(Boolean).join(' ').padEnd(14)}  ${String(r.stats.files).padStart(6)}  ${formatBytes(r.stats.bytes).padStart(9)}  ${r.properties.created}`,
              ),
            ],
    );
  });

  withConnection(
    withCommon(
      image
        .command('show')
        .argument('<image>', 'name or id')
        .option('--files', 'also list every entry'),
    ),
  ).action(async (ref: string, o: Common & { files?: boolean }) => {
    const remote = await remoteFor(o, { env: process.env });
    if (remote) return remoteImageShow(remote, ref, o);
    const lib = new ImageLibrary(openStore(o));
    const rec = lib.resolve(ref);
    const names = lib.namesOf(rec.id);
    const prev = names.map((n) => lib.getName(n)!).flatMap((n) => n.previous);
    let files: string[] | undefined;
    if (o.files) {
      const { manifest } = lib.loadManifest(rec.id);
      files = manifest.entries.map(
        (e) =>
          `${e.type.padEnd(8)} ${(e.mode & 0o7777).toString(8).padStart(4, '0')} ${e.uid}:${e.gid} ${String(e.size).padStart(10)} /${e.path.toString('utf8')}${e.target ? ` -> ${e.target.toString('utf8')}` : ''}`,
      );
    }
    out(o, { image: rec, names, previousVersions: prev, files }, () => [
      ...summary(rec, names),
      ...(prev.length ? [`previous:     ${prev.join(', ')}`] : []),
      ...(files ?? []),
    ]);
  });

  withCommon(
    image
      .command('apply')
      .argument('<image>', 'name or id')
      .argument('<target>', 'new or empty directory')
      .option(
        '--trusted-key <file>',
        'refuse the image unless signed by this ed25519 public key (PEM)',
      )
      .option(
        '--no-owners',
        'do not set owners or create devices (default: set them when running as root)',
      )
      .option('--workers <n>', 'worker threads (default: one per core)', (v) => parseInt(v, 10))
      .option(
        '--allow-devices',
        'opaque third-party images: create the device nodes they hold (refused by default)',
      )
      .option(...FORMAT_PLUGIN_OPTION),
  ).action(
    async (
      ref: string,
      target: string,
      o: Common & {
        trustedKey?: string;
        owners?: boolean;
        workers?: number;
        allowDevices?: boolean;
        formatPlugin?: string[];
      },
    ) => {
      const store = openStore(o);
      const rec = new ImageLibrary(store).resolve(ref);
      if (rec.imageFormat === 'opaque') {
        // A third-party file stored as is: its format reads it; the tree is laid out safely.
        if (o.trustedKey) checkSignature(rec, readKeyFile(o.trustedKey, 'public'));
        const registry = await loadFormats(pluginPaths(o));
        const res = await applyOpaque({
          store,
          registry,
          record: rec,
          target,
          devices: !!o.allowDevices,
          ...(o.owners === false ? { owners: false } : {}),
          onWarning: (w) => process.stderr.write(`warning: ${w.message}\n`),
        });
        out(
          o,
          {
            image: rec.id,
            target,
            entries: res.entries,
            bytes: res.bytes,
            format: rec.opaqueFormat,
          },
          () =>
            `applied ${rec.properties.name} (${rec.opaqueFormat} file, ${rec.id.slice(0, 12)}): ${res.entries} entries, ${formatBytes(res.bytes)} into ${target}`,
        );
        return;
      }
      const view = progressView(o.progress ?? 'auto', !!o.json);
      const c = cancellable();
      try {
        const res = await applyImage({
          store,
          image: ref,
          target,
          trustedKey: o.trustedKey ? readKeyFile(o.trustedKey, 'public') : undefined,
          owners: o.owners === false ? false : undefined,
          workers: o.workers,
          signal: c.signal,
          onProgress: view.onProgress,
          onWarning: view.onWarning,
        });
        view.stop();
        out(
          o,
          {
            image: res.record.id,
            target,
            entries: res.entries,
            bytes: res.bytes,
            warnings: res.warnings,
          },
          () =>
            `applied ${res.record.properties.name} (${res.record.id.slice(0, 12)}): ${res.entries} entries, ${formatBytes(res.bytes)} into ${target}`,
        );
      } finally {
        view.stop();
        c.done();
      }
    },
  );

  withCommon(
    image
      .command('verify')
      .argument('<image>', 'name or id')
      .option(
        '--trusted-key <file>',
        'also check the signature against this ed25519 public key (PEM)',
      ),
  ).action(async (ref: string, o: Common & { trustedKey?: string }) => {
    const view = progressView(o.progress ?? 'auto', !!o.json);
    try {
      const res = await verifyImage({
        store: openStore(o),
        image: ref,
        trustedKey: o.trustedKey ? readKeyFile(o.trustedKey, 'public') : undefined,
        onProgress: view.onProgress,
      });
      view.stop();
      out(
        o,
        {
          image: res.record.id,
          ok: res.problems.length === 0,
          signature: res.signature,
          chunks: res.chunks,
          bytes: res.bytes,
          problems: res.problems,
        },
        () => [
          ...res.problems.map((p) => `${p.code}: ${p.message}`),
          `${res.problems.length === 0 ? 'ok' : 'FAILED'}: ${res.chunks} chunks (${formatBytes(res.bytes)}) checked, ${res.problems.length} bad; manifest hash ok; signature ${res.signature}`,
        ],
      );
      if (res.problems.length) {
        const first = res.problems[0]!;
        throw new ReimageError(
          first.code,
          `${res.problems.length} chunk(s) of image ${res.record.id} failed verification (first: ${first.message})`,
          {
            details: { reported: true },
          },
        );
      }
    } finally {
      view.stop();
    }
  });

  withCommon(
    image
      .command('diff')
      .argument('<from>', 'name or id')
      .argument('<to>', 'name or id')
      .option(
        '--limit <n>',
        'list at most n changed entries (default 200; 0 for all)',
        (v) => parseInt(v, 10),
        200,
      ),
  ).action((a: string, b: string, o: Common & { limit: number }) => {
    const d = diffImages(openStore(o), a, b);
    const shown = o.limit > 0 ? d.changes.slice(0, o.limit) : d.changes;
    out(o, d, () => [
      ...shown.map(
        (c) =>
          `${c.change === 'added' ? '+' : c.change === 'removed' ? '-' : 'M'} /${c.path === '/' ? '' : c.path}${c.fields ? `  (${c.fields.join(', ')})` : ''}`,
      ),
      ...(shown.length < d.changes.length
        ? [`… ${d.changes.length - shown.length} more (--limit 0 for all)`]
        : []),
      `${d.added} added, ${d.removed} removed, ${d.modified} modified, ${d.unchanged} unchanged; ${formatBytes(d.newDataBytes)} of new data`,
    ]);
  });

  withConnection(
    withCommon(
      image
        .command('delete')
        .argument('<images...>', 'names or ids')
        .option('--all-versions', 'also delete the previous versions kept under each name'),
    ),
  ).action(async (refs: string[], o: Common & { allVersions?: boolean }) => {
    const remote = await remoteFor(o, { env: process.env });
    if (remote) return remoteImageDelete(remote, refs, o);
    const store = openStore(o);
    const lib = new ImageLibrary(store);
    // Exclusive: no capture may re-use the image while its record goes, and no update may
    // write the record back after it is gone.
    const lock = await store.lock('exclusive', 'image delete', {
      waitMs: 60_000,
      onWait: (h) =>
        process.stderr.write(
          `waiting for ${h.map((x) => `${x.purpose} (pid ${x.pid})`).join(', ')}…\n`,
        ),
    });
    const deleted: string[] = [];
    try {
      // Resolve everything first: a bad name changes nothing.
      const plan = refs.map((ref) => ({ ref, rec: lib.resolve(ref), name: lib.getName(ref) }));
      for (const { ref, rec, name } of plan) {
        if (!name) {
          const named = lib.namesOf(rec.id);
          if (named.length) {
            throw new ReimageError(
              'IMAGE_IN_USE',
              `image ${rec.id} is named ${named.join(', ')}; delete it by name (${ref} is its id)`,
            );
          }
        }
      }
      for (const { rec, name } of plan) {
        const ids = [rec.id, ...(name && o.allVersions ? name.previous : [])];
        if (name) lib.deleteName(name.name);
        for (const id of ids) {
          if (lib.namesOf(id).length === 0 && lib.getRecord(id)) {
            lib.deleteImage(id);
            deleted.push(id);
          }
        }
      }
    } finally {
      lock.release();
    }
    out(
      o,
      { deleted },
      () => `deleted ${deleted.length} image(s); run \`reimage store gc\` to free their space`,
    );
  });

  withCommon(
    image
      .command('update')
      .description(
        "change an image's description or properties (the tree, and so the id, never changes)",
      )
      .argument('<image>', 'name or id')
      .option('--description <text>', 'new description')
      .option(
        '--property <key=value>',
        'set a property (os, version, arch, or any key); repeatable',
        collect,
      )
      .option('--unset <key>', 'remove a free-form property; repeatable', collect)
      .option(
        '--sign-key <file>',
        're-sign with this ed25519 private key (a signature covers the properties)',
      ),
  ).action(
    async (
      ref: string,
      o: Common & { description?: string; property?: string[]; unset?: string[]; signKey?: string },
    ) => {
      const store = openStore(o);
      const lib = new ImageLibrary(store);
      const key = o.signKey ? readKeyFile(o.signKey, 'private') : undefined;
      const lock = await store.lock('shared', 'image update');
      let rec: ImageRecord;
      let hadSignature = false;
      try {
        rec = lib.resolve(ref);
        const props = setProperties(
          { ...rec.properties, custom: { ...rec.properties.custom } },
          parseProperties(o.property),
        );
        if (o.description !== undefined) props.description = o.description;
        for (const k of o.unset ?? []) delete props.custom[k];
        rec.properties = props;
        hadSignature = !!rec.signature;
        delete rec.signature;
        if (key) rec.signature = signRecord(rec, key);
        lib.putRecord(rec);
      } finally {
        lock.release();
      }
      if (hadSignature && !key)
        process.stderr.write(
          'warning: the image was signed; its signature no longer matches and was removed (re-sign with --sign-key)\n',
        );
      out(o, { image: rec }, () => summary(rec, lib.namesOf(rec.id)));
    },
  );

  withCommon(
    image
      .command('sign')
      .argument('<image>', 'name or id')
      .requiredOption('--key <file>', 'ed25519 private key (PEM)'),
  ).action(async (ref: string, o: Common & { key: string }) => {
    const store = openStore(o);
    const lib = new ImageLibrary(store);
    const key = readKeyFile(o.key, 'private');
    const lock = await store.lock('shared', 'image sign');
    let rec: ImageRecord;
    try {
      rec = lib.resolve(ref);
      lib.loadManifest(rec.id); // only sign what hashes to its id
      rec.signature = signRecord(rec, key);
      lib.putRecord(rec);
    } finally {
      lock.release();
    }
    out(
      o,
      { image: rec.id, signature: rec.signature },
      () => `signed ${rec.id} with key ${rec.signature!.keyId}`,
    );
  });

  withCommon(
    image
      .command('import')
      .description(
        'bring a third-party image file (tar, tar.gz, tar.zst, WIM, squashfs, plugins) into the library',
      )
      .argument('<file>', 'image file')
      .requiredOption('--name <name>', 'image name')
      .option('--format <format>', 'format (default: detected from the name and content)')
      .option('--index <n>', 'image inside a multi-image file (WIM), from 1', (v) =>
        parseInt(v, 10),
      )
      .option(
        '--opaque',
        'store the file itself as content, applied later by its format (instead of converting its tree)',
      )
      .option('--description <text>', 'description')
      .option(
        '--property <key=value>',
        'property (os, version, arch, or any key); repeatable',
        collect,
      )
      .option(...FORMAT_PLUGIN_OPTION),
  ).action(
    async (
      file: string,
      o: Common & {
        name: string;
        format?: string;
        index?: number;
        opaque?: boolean;
        description?: string;
        property?: string[];
        formatPlugin?: string[];
      },
    ) => {
      const store = openStore(o, true); // the first capture or import creates the store
      const registry = await loadFormats(pluginPaths(o));
      const props = parseProperties(o.property);
      const res = await importFile({
        store,
        registry,
        file,
        name: o.name,
        format: o.format,
        index: o.index,
        opaque: !!o.opaque,
        description: o.description,
        properties: (base) => setProperties(base, props),
      });
      out(o, { image: res.record, created: res.created, format: res.format }, () => [
        ...summary(res.record, [o.name]),
        `imported:     ${file} (${res.format}${o.opaque ? ', opaque' : ''})`,
        res.record.id,
      ]);
    },
  );

  withCommon(
    image
      .command('export')
      .description('write an image as a file of another format')
      .argument('<image>', 'name or id')
      .requiredOption(
        '--format <format>',
        'tar, tar.gz, tar.zst, wim, squashfs, or a plugin format',
      )
      .requiredOption('-o, --output <file>', 'file to write (must not exist)')
      .option(...FORMAT_PLUGIN_OPTION),
  ).action(
    async (
      ref: string,
      o: Common & { format: string; output: string; formatPlugin?: string[] },
    ) => {
      if (existsSync(o.output))
        throw new ReimageError('INVALID_ARGUMENT', `${o.output} exists; refusing to overwrite it`);
      const registry = await loadFormats(pluginPaths(o));
      const res = await exportImage({
        store: openStore(o),
        registry,
        image: ref,
        format: o.format,
        out: o.output,
      });
      const size = statSync(o.output).size;
      out(
        o,
        { image: res.record.id, format: res.format, output: o.output, bytes: size },
        () =>
          `exported ${res.record.properties.name} (${res.record.id.slice(0, 12)}) as ${res.format}: ${o.output} (${formatBytes(size)})`,
      );
    },
  );

  withCommon(
    program
      .command('formats')
      .description('image formats: which are usable here and what each keeps')
      .option(...FORMAT_PLUGIN_OPTION),
    false,
  ).action(async (o: Common & { formatPlugin?: string[] }) => {
    const registry = await loadFormats(pluginPaths(o));
    const rows = await Promise.all(
      registry.list().map(async (f) => ({
        name: f.name,
        extensions: f.extensions,
        description: f.description,
        unavailable: (await f.unavailable()) ?? null,
        capabilities: f.capabilities,
      })),
    );
    out(
      o,
      {
        formats: [
          {
            name: 'native-v1',
            extensions: [],
            description: 'reimage native images (the library itself)',
            unavailable: null,
            capabilities: null,
          },
          ...rows,
        ],
      },
      () => [
        'FORMAT     STATUS       KEEPS',
        `${'native-v1'.padEnd(10)} ${'ok'.padEnd(12)} everything (the library's own format)`,
        ...rows.map(
          (r) =>
            `${r.name.padEnd(10)} ${(r.unavailable ? 'unavailable' : 'ok').padEnd(12)} ${Object.entries(
              r.capabilities,
            )
              .filter(([, v]) => v)
              .map(([k]) => k)
              .join(', ')}${r.unavailable ? `\n           ${r.unavailable}` : ''}`,
        ),
      ],
    );
  });

  const store = program.command('store').description('content store maintenance');
  withCommon(
    store
      .command('gc')
      .description('delete packs and objects no image needs (waits for running captures)')
      .option('--dry-run', 'say what would be deleted')
      .option(
        '--wait <seconds>',
        'how long to wait for running captures and applies',
        (v) => parseInt(v, 10),
        600,
      ),
  ).action(async (o: Common & { dryRun?: boolean; wait: number }) => {
    const res = await collectGarbage(openStore(o), {
      waitMs: o.wait * 1000,
      dryRun: !!o.dryRun,
      onWait: (h) =>
        process.stderr.write(
          `waiting for ${h.map((x) => `${x.purpose} (pid ${x.pid})`).join(', ')}…\n`,
        ),
    });
    out(
      o,
      res,
      () =>
        `${o.dryRun ? 'would delete' : 'deleted'} ${res.packsDeleted} pack(s) (${formatBytes(res.bytesFreed)}), ${res.objectsDeleted} object(s), ${res.tmpRemoved} leftover temporary folder(s); ${res.packsKept} pack(s) in use`,
    );
  });

  withCommon(store.command('show').description('what the store holds')).action((o: Common) => {
    const s = openStore(o);
    const packs = s.listPacks();
    let bytes = 0;
    for (const p of packs) bytes += statSync(s.packPath(p)).size;
    const lib = new ImageLibrary(s);
    const doc = {
      store: s.root,
      packs: packs.length,
      packBytes: bytes,
      chunks: s.loadIndex(packs).size,
      images: lib.listRecords().length,
      names: lib.listNames().length,
      locks: s.lockHolders(),
    };
    out(o, doc, () => [
      `store:   ${doc.store}`,
      `images:  ${doc.images} (${doc.names} names)`,
      `packs:   ${doc.packs} (${formatBytes(doc.packBytes)}), ${doc.chunks} chunks`,
      `locks:   ${doc.locks.length ? doc.locks.map((l) => `${l.kind} ${l.purpose} pid ${l.pid}`).join('; ') : 'none'}`,
    ]);
  });

  const key = program.command('key').description('signing keys');
  withCommon(
    key
      .command('create')
      .description('make an ed25519 key pair for signing images')
      .requiredOption('--out <file>', 'private key file; the public key goes to FILE.pub'),
    false,
  ).action((o: Common & { out: string }) => {
    if (existsSync(o.out))
      throw new ReimageError('INVALID_ARGUMENT', `${o.out} exists; refusing to overwrite a key`);
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    writeFileSync(o.out, privateKey.export({ format: 'pem', type: 'pkcs8' }), {
      mode: 0o600,
      flag: 'wx',
    });
    writeFileSync(`${o.out}.pub`, publicKey.export({ format: 'pem', type: 'spki' }), {
      flag: 'wx',
    });
    out(
      o,
      { private: o.out, public: `${o.out}.pub`, keyId: keyIdOf(publicKey) },
      () => `key ${keyIdOf(publicKey)}: ${o.out} (private), ${o.out}.pub (public)`,
    );
  });

  // The management server and its admin commands (only this entry point reads the environment).
  registerServerCommand(program, { env: process.env });
  registerFetchCommand(image);
  registerAdminCommands(program, { env: process.env, image });
  registerStatusSummaries(
    program.commands.find((c) => c.name() === 'status')!,
    { env: process.env },
  );
  registerStateCommands(program, { env: process.env });
  registerAgentCommands(program);
  registerLabCommands(program);
  registerUploadCommand(image, { env: process.env });

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  const json = argv.includes('--json');
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      return e.exitCode === 0 ? 0 : errorCodes.USAGE.exit;
    }
    if (isReimageError(e)) {
      const exit = errorCodes[e.code].exit;
      // A command that already printed its JSON document (verify's report) marks the error as reported.
      const reported = e.details?.reported === true;
      if (json && !reported) {
        process.stdout.write(
          JSON.stringify(
            { error: { code: e.code, message: e.message, details: e.details } },
            null,
            2,
          ) + '\n',
        );
      }
      if (!reported || !json) {
        process.stderr.write(`reimage: ${e.code}: ${e.message}\n`);
        if (e.code !== 'CANCELLED') process.stderr.write(`  ${errorCodes[e.code].help}\n`);
      }
      return exit;
    }
    process.stderr.write(
      `reimage: internal error (a bug; please report it): ${(e as Error)?.stack ?? String(e)}\n`,
    );
    return 70;
  }
}

process.exitCode = await main(process.argv.slice(2));
