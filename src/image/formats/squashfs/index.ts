import { ReimageError } from '../../../errors.js';
import type { ImageFormat, ReadOptions, TreeEntry } from '../api.js';
import {
  readViaTool,
  runTool,
  startsWith,
  toolMissing,
  writeViaTool,
  type Tools,
} from '../wim/external-tool.js';

/**
 * SquashFS images, through `mksquashfs` and `unsquashfs` (Debian package squashfs-tools).
 * Reading extracts the image into a private temporary directory and reads that back; writing
 * lays the tree out in a staging directory and packs it (zstd).
 *
 * Measured (squashfs-tools 4.5.1, as root): owners, modes, xattrs (user, security, trusted),
 * hard links, devices, FIFOs, names that are not UTF-8 and holes survive (squashfs keeps holes
 * per 128 KiB block; the reader narrows them to 4 KiB blocks of zeros, as a filesystem has
 * them); mtimes are whole seconds (32-bit, 1970-2106). Run by another user than root,
 * unsquashfs drops setuid/setgid bits and owners, and fails on device nodes.
 */

const MKSQUASHFS = 'mksquashfs';
const UNSQUASHFS = 'unsquashfs';
const TOOLS: Tools = { names: [MKSQUASHFS, UNSQUASHFS], pkg: 'squashfs-tools' };
/** The superblock magic 0x73717368, little-endian. */
const MAGIC = Buffer.from('hsqs', 'latin1');

export const squashfsFormat: ImageFormat = {
  name: 'squashfs',
  extensions: ['.squashfs', '.sqfs', '.sfs'],
  description:
    'SquashFS image (via mksquashfs/unsquashfs, package squashfs-tools); mtimes in whole seconds',
  capabilities: {
    owners: true,
    xattrs: true,
    hardlinks: true,
    devices: true,
    fifos: true,
    sparse: true,
    mtimeNs: false,
    rawNames: true,
  },

  unavailable(): Promise<string | undefined> {
    return toolMissing(TOOLS);
  },

  probe(file: string): Promise<boolean> {
    return startsWith(file, MAGIC);
  },

  async *read(file: string, opts: ReadOptions = {}): AsyncGenerator<TreeEntry> {
    if (opts.index !== undefined && opts.index !== 1) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `a SquashFS file holds one image; there is no image ${String(opts.index)}`,
        { details: { index: opts.index } },
      );
    }
    yield* readViaTool('squashfs', TOOLS, file, 'a SquashFS image', async (dir, image) => {
      await runTool(UNSQUASHFS, ['-no-progress', '-quiet', '-d', dir, '-f', image]);
    });
  },

  async write(entries: AsyncIterable<TreeEntry>, file: string): Promise<void> {
    await writeViaTool(
      'squashfs',
      TOOLS,
      entries,
      file,
      'a SquashFS image',
      async (staging, out) => {
        await runTool(MKSQUASHFS, [
          staging,
          out,
          '-comp',
          'zstd',
          '-noappend',
          '-no-progress',
          '-quiet',
        ]);
      },
    );
  },
};
