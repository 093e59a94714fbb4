import type { Command } from 'commander';
import { captureImage } from '../image/capture.js';
import {
  cancellable,
  collect,
  openStore,
  out,
  parseProperties,
  readKeyFile,
  summary,
  withCommon,
  type Common,
} from './common.js';
import { formatBytes, progressView } from './output.js';

/** `reimage image capture`: a tree into the library. */
export function registerCaptureCommand(image: Command): void {
  withCommon(
    image
      .command('capture')
      .argument('<source>', 'root of the tree to capture')
      .requiredOption(
        '--name <name>',
        'image name (unique in the store; a new capture keeps the older one by id)',
      )
      .option('--description <text>', 'description')
      .option(
        '--property <key=value>',
        'property (os, version, arch, or any key); repeatable',
        collect,
      )
      .option(
        '--exclude <pattern>',
        'glob to leave out (/-anchored at the root, else any depth); repeatable',
        collect,
      )
      .option(
        '--system',
        'capturing a live system: leave out /proc, /sys, /dev, /run, /tmp contents; one filesystem',
      )
      .option('--one-file-system', 'do not descend into other filesystems')
      .option('--skip-unreadable', 'leave out unreadable files with a warning instead of failing')
      .option(
        '--parent <image>',
        'earlier capture of this tree: files unchanged since (size, mtime, inode, ctime) are not read again',
      )
      .option('--sign-key <file>', 'ed25519 private key (PEM) to sign the image with')
      .option(
        '--source-machine <name>',
        'source machine recorded in the properties (default: this host)',
      )
      .option('--workers <n>', 'worker threads (default: one per core)', (v) => parseInt(v, 10)),
  ).action(async (source: string, o: Common & Record<string, unknown>) => {
    const store = openStore(o, true); // the first capture or import creates the store
    const view = progressView(o.progress ?? 'auto', !!o.json);
    const c = cancellable();
    try {
      const res = await captureImage({
        source,
        store,
        name: o.name as string,
        description: o.description as string | undefined,
        properties: parseProperties(o.property as string[] | undefined),
        excludes: (o.exclude as string[] | undefined) ?? [],
        system: !!o.system,
        oneFileSystem: o.oneFileSystem ? true : undefined,
        skipUnreadable: !!o.skipUnreadable,
        parent: o.parent as string | undefined,
        signKey: o.signKey ? readKeyFile(o.signKey as string, 'private') : undefined,
        sourceMachine: o.sourceMachine as string | undefined,
        workers: o.workers as number | undefined,
        signal: c.signal,
        onProgress: view.onProgress,
        onWarning: view.onWarning,
      });
      view.stop();
      out(
        o,
        { image: res.record, created: res.created, reused: res.reused, warnings: res.warnings },
        () => [
          ...summary(res.record, [o.name as string]),
          `stored:       ${formatBytes(res.record.stats.storedBytes)} new in the store${res.created ? '' : ' (identical tree was already there)'}`,
          ...(res.warnings.length ? [`warnings:     ${res.warnings.length}`] : []),
          res.record.id,
        ],
      );
    } finally {
      view.stop();
      c.done();
    }
  });
}
