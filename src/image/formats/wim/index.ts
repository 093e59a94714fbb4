import { ReimageError } from '../../../errors.js';
import { showPath } from '../../manifest.js';
import type { ImageFormat, ReadOptions, TreeEntry } from '../api.js';
import {
  readViaTool,
  runTool,
  startsWith,
  toolMissing,
  writeViaTool,
  type Tools,
} from './external-tool.js';

/**
 * Windows Imaging (WIM) files, through `wimlib-imagex` (Debian package wimtools). Reading
 * applies one image of the file into a private temporary directory and reads that back;
 * writing lays the tree out in a staging directory and captures it. Both use `--unix-data`,
 * so owners, modes, devices, FIFOs and Linux xattrs (every namespace) are kept; `--norpfix`
 * keeps absolute symlink targets exactly as stored (no rewriting to the extraction directory).
 *
 * Measured (wimlib 1.13): hard links and holes survive (wimlib marks sparse files and
 * extracts zero runs as holes); mtimes keep 100 ns (Windows FILETIME), not nanoseconds;
 * names and symlink targets must be valid UTF-8 (WIM names are UTF-16), so others are refused
 * before anything is written. Run by another user than root, wimlib only warns that owners
 * and devices could not be restored, and those are lost.
 */

const TOOL = 'wimlib-imagex';
const TOOLS: Tools = { names: [TOOL], pkg: 'wimtools' };
const MAGIC = Buffer.from('MSWIM\0\0\0', 'latin1');

function checkIndex(index: number | undefined): number {
  const i = index ?? 1;
  if (!Number.isSafeInteger(i) || i < 1) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `WIM image index must be a whole number from 1, got ${String(index)}`,
      { details: { index } },
    );
  }
  return i;
}

/** Whether a path or symlink target is valid UTF-8 (wimlib stores names as UTF-16). */
function isUtf8(b: Buffer): boolean {
  const s = b.toString('utf8');
  return !s.includes('\ufffd') || Buffer.from(s, 'utf8').equals(b);
}

/** Refuses names wimlib cannot store, naming the entry, before the WIM is written. */
async function* utf8Only(entries: AsyncIterable<TreeEntry>): AsyncGenerator<TreeEntry> {
  for await (const te of entries) {
    const e = te.entry;
    const bad = !isUtf8(e.path)
      ? 'its name'
      : e.type === 'symlink' && e.target && !isUtf8(e.target)
        ? 'its symlink target'
        : undefined;
    if (bad) {
      const shown = showPath(e.path);
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `a WIM cannot hold "${shown}": ${bad} is not valid UTF-8`,
        { details: { path: shown } },
      );
    }
    yield te;
  }
}

export const wimFormat: ImageFormat = {
  name: 'wim',
  extensions: ['.wim'],
  description:
    'Windows Imaging file (via wimlib-imagex, package wimtools) with UNIX data; mtimes to 100 ns, UTF-8 names only',
  capabilities: {
    owners: true,
    xattrs: true,
    hardlinks: true,
    devices: true,
    fifos: true,
    sparse: true,
    mtimeNs: false,
    rawNames: false,
  },

  unavailable(): Promise<string | undefined> {
    return toolMissing(TOOLS);
  },

  probe(file: string): Promise<boolean> {
    return startsWith(file, MAGIC);
  },

  async *read(file: string, opts: ReadOptions = {}): AsyncGenerator<TreeEntry> {
    const index = checkIndex(opts.index);
    yield* readViaTool('wim', TOOLS, file, `a WIM (image ${index})`, async (dir, wim) => {
      await runTool(TOOL, ['apply', wim, String(index), dir, '--unix-data', '--norpfix']);
    });
  },

  async write(entries: AsyncIterable<TreeEntry>, file: string): Promise<void> {
    await writeViaTool('wim', TOOLS, utf8Only(entries), file, 'a WIM', async (staging, out) => {
      await runTool(TOOL, [
        'capture',
        staging,
        out,
        'reimage',
        '--unix-data',
        '--norpfix',
        '--compress=LZX',
      ]);
    });
  },
};
