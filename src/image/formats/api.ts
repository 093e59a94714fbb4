import type { Entry } from '../manifest.js';

/**
 * The image-format plugin API. A format turns its files into a stream of tree entries and
 * back; the core does everything else (validation, chunking, deduplication, signatures,
 * safe application). A third party adds a format by exporting an `ImageFormat` from a module
 * and loading it with `--format-plugin PATH` (see docs/image-formats.md); nothing in src/
 * changes.
 */

/** One entry of a tree; a regular file's data comes from `data()`. */
export interface TreeEntry {
  /**
   * Path (raw bytes, relative, '/'-separated; the root is the empty path), type, mode,
   * owner, mtime, size, symlink or hard-link target, device numbers, xattrs, sparse regions.
   * `chunks`/`lengths` are not set by formats.
   */
  entry: Entry;
  /**
   * For `file` entries: the file's data regions concatenated (exactly the sum of
   * `entry.segments` lengths, or `entry.size` bytes when not sparse). A stream-based reader
   * may require it to be consumed before the next entry is requested.
   */
  data?: () => AsyncIterable<Uint8Array>;
}

/** What a format can represent; the conformance suite checks each claim. */
export interface FormatCapabilities {
  owners: boolean;
  xattrs: boolean;
  hardlinks: boolean;
  devices: boolean;
  fifos: boolean;
  sparse: boolean;
  /** mtimes keep nanoseconds (else whole seconds or coarser) */
  mtimeNs: boolean;
  /** names that are not valid UTF-8 */
  rawNames: boolean;
}

export interface ReadOptions {
  /** image index inside a multi-image file (WIM), 1-based */
  index?: number;
}

export interface ImageFormat {
  /** short name used on the command line: `tar`, `tar.zst`, `wim`, ... */
  readonly name: string;
  /** file name endings, longest first, e.g. ['.tar.zst', '.tzst'] */
  readonly extensions: readonly string[];
  readonly description: string;
  readonly capabilities: FormatCapabilities;
  /** Why the format cannot be used here (e.g. its tool is missing, and which package has it), or undefined. */
  unavailable(): Promise<string | undefined>;
  /** Whether the file is in this format (by content, not by name). */
  probe(file: string): Promise<boolean>;
  /** Reads the file as tree entries, in any order; the core sorts and validates them. */
  read(file: string, opts?: ReadOptions): AsyncIterable<TreeEntry>;
  /** Writes entries (manifest order: parents before children) into a new file. */
  write(entries: AsyncIterable<TreeEntry>, file: string): Promise<void>;
}

/** The formats known to a command: the built-in ones plus any plugins loaded. */
export class FormatRegistry {
  private readonly formats = new Map<string, ImageFormat>();

  register(f: ImageFormat): void {
    if (
      !f ||
      typeof f.name !== 'string' ||
      typeof f.read !== 'function' ||
      typeof f.write !== 'function'
    ) {
      throw new TypeError('not an ImageFormat: it needs name, read() and write()');
    }
    this.formats.set(f.name, f);
  }

  get(name: string): ImageFormat | undefined {
    return this.formats.get(name);
  }

  list(): ImageFormat[] {
    return [...this.formats.values()];
  }

  /** By extension first, then by probing the content. */
  async detect(file: string): Promise<ImageFormat | undefined> {
    const lower = file.toLowerCase();
    const byName = this.list()
      .flatMap((f) => f.extensions.map((ext) => ({ f, ext })))
      .sort((a, b) => b.ext.length - a.ext.length)
      .find(({ ext }) => lower.endsWith(ext));
    if (byName && (await byName.f.probe(file))) return byName.f;
    for (const f of this.list()) if (await f.probe(file)) return f;
    return undefined;
  }
}
