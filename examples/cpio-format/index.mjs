/**
 * A worked example of a reimage image-format plugin: the cpio "newc" format (what
 * `find . | cpio -o -H newc` writes, and what Linux initramfs images are made of), in plain
 * JavaScript, written the way a third party would write it.
 *
 * Load it with `reimage --format-plugin examples/cpio-format/index.mjs ...` (or list it in
 * REIMAGE_FORMAT_PLUGINS). See README.md beside this file and docs/image-formats.md.
 *
 * The only thing it takes from reimage is `ReimageError`, so that a malformed archive is
 * reported with an error code (not as an internal error), like any other refusal.
 * `import ... from 'reimage'` resolves here because this file lives inside the reimage
 * package (Node's package self-reference: it gives ../../dist/src/index.js, the public API);
 * in your own package, depend on reimage and the same line works.
 *
 * newc in brief: each member is a 110-byte ASCII header (magic "070701", then thirteen
 * 8-digit hex fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
 * rdevminor namesize check), the NUL-terminated name, padding to a multiple of 4, the data
 * (a file's content, a symlink's target) and padding to a multiple of 4. The archive ends
 * with a member named "TRAILER!!!". Hard links share (devmajor, devminor, ino); GNU cpio
 * stores the data with the last name of a group and size 0 with the others.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { ReimageError } from 'reimage';

const MAGIC = '070701';
const HEADER = 110;
const TRAILER = Buffer.from('TRAILER!!!');
const NLINK_AT = 6 + 8 * 4; // byte offset of c_nlink in a header
const MAX_NAME = 4096;
const U32 = 0xffffffff;
const BLOCK = 512; // GNU cpio pads the archive to whole 512-byte blocks

const TYPE_BITS = {
  dir: 0o040000,
  file: 0o100000,
  symlink: 0o120000,
  fifo: 0o010000,
  char: 0o020000,
  block: 0o060000,
};
const SOCKET_BITS = 0o140000;
const TYPE_OF = new Map(Object.entries(TYPE_BITS).map(([t, bits]) => [bits, t]));

const FIELDS = [
  'ino',
  'mode',
  'uid',
  'gid',
  'nlink',
  'mtime',
  'filesize',
  'devmajor',
  'devminor',
  'rdevmajor',
  'rdevminor',
  'namesize',
  'check',
];

const pad4 = (n) => (4 - (n % 4)) % 4;

/**
 * A malformed archive is bad input named on the command line: INVALID_ARGUMENT, as the
 * built-in formats report it. (Hostile paths are not malformed: they are passed on, and the
 * core refuses them with MANIFEST_INVALID.)
 */
function malformed(file, offset, why) {
  return new ReimageError(
    'INVALID_ARGUMENT',
    `cannot read ${file} as a cpio archive: at byte ${offset}: ${why}`,
    { details: { file, offset } },
  );
}

function readExactly(fd, buf, position) {
  let got = 0;
  while (got < buf.length) {
    const n = readSync(fd, buf, got, buf.length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/** The 13 numeric fields of a header, or a string saying what is wrong. */
function parseHeader(buf) {
  if (buf.toString('latin1', 0, 6) !== MAGIC) {
    const magic = buf.toString('latin1', 0, 6);
    return magic === '070707' || magic === '070702'
      ? `format ${magic} is not supported (only newc, 070701)`
      : 'no newc magic "070701"';
  }
  const h = {};
  for (let i = 0; i < FIELDS.length; i++) {
    const s = buf.toString('latin1', 6 + i * 8, 14 + i * 8);
    if (!/^[0-9A-Fa-f]{8}$/.test(s)) return `field ${FIELDS[i]} is not 8 hex digits`;
    h[FIELDS[i]] = parseInt(s, 16);
  }
  return h;
}

/** One member's data, read from its place in the file whenever the core asks for it. */
function dataAt(file, start, length) {
  return async function* () {
    const fd = openSync(file, 'r');
    try {
      let pos = 0;
      while (pos < length) {
        const buf = Buffer.allocUnsafe(Math.min(length - pos, 1 << 20));
        const n = readExactly(fd, buf, start + pos);
        if (n === 0) throw malformed(file, start + pos, 'the archive ends inside a file');
        pos += n;
        yield n === buf.length ? buf : buf.subarray(0, n);
      }
    } finally {
      closeSync(fd);
    }
  };
}

/**
 * Reads a newc archive as tree entries. Paths are passed on exactly as stored ("." for the
 * root, "./a" or "a" for the others): the core normalizes them, and refuses hostile ones
 * (absolute, "..", below a symlink) — a plugin must not hide them by "fixing" them.
 */
async function* read(file) {
  const fd = openSync(file, 'r');
  try {
    const fileSize = fstatSync(fd).size;
    const hdr = Buffer.alloc(HEADER);
    /** hard-link groups (nlink > 1) by dev:ino: the name holding the data, or names waiting for it */
    const groups = new Map();
    let off = 0;
    for (;;) {
      if (readExactly(fd, hdr, off) < HEADER) {
        throw malformed(file, off, 'the archive ends before its TRAILER!!! member');
      }
      const h = parseHeader(hdr);
      if (typeof h === 'string') throw malformed(file, off, h);
      if (h.namesize < 2 || h.namesize > MAX_NAME + 1) {
        throw malformed(file, off, `name size ${h.namesize} is out of range`);
      }
      const nameBuf = Buffer.alloc(h.namesize);
      if (readExactly(fd, nameBuf, off + HEADER) < h.namesize) {
        throw malformed(file, off, 'the archive ends inside a name');
      }
      if (nameBuf[h.namesize - 1] !== 0 || nameBuf.indexOf(0) !== h.namesize - 1) {
        throw malformed(file, off, 'the name is not one NUL-terminated string');
      }
      const name = nameBuf.subarray(0, h.namesize - 1);
      const dataOff = off + HEADER + h.namesize + pad4(HEADER + h.namesize);
      if (name.equals(TRAILER)) break;
      if (dataOff + h.filesize > fileSize) {
        throw malformed(
          file,
          off,
          `member ${JSON.stringify(name.toString())} says ${h.filesize} bytes of data but the archive ends first (truncated)`,
        );
      }
      off = dataOff + h.filesize + pad4(h.filesize);

      const bits = h.mode & 0o170000;
      if (bits === SOCKET_BITS) continue; // sockets are not part of a tree (capture skips them too)
      const type = TYPE_OF.get(bits);
      if (!type) throw malformed(file, dataOff, `unknown file type 0${bits.toString(8)}`);
      if (h.filesize > 0 && type !== 'file' && type !== 'symlink') {
        throw malformed(file, dataOff, `a ${type} with ${h.filesize} bytes of data`);
      }
      const entry = {
        path: Buffer.from(name),
        type,
        mode: h.mode & 0o7777,
        uid: h.uid,
        gid: h.gid,
        mtimeNs: BigInt(h.mtime) * 1_000_000_000n,
        size: 0,
        xattrs: [],
      };
      if (type === 'symlink') {
        entry.target = Buffer.alloc(h.filesize);
        readExactly(fd, entry.target, dataOff);
        yield { entry };
      } else if (type === 'char' || type === 'block') {
        entry.major = h.rdevmajor;
        entry.minor = h.rdevminor;
        yield { entry };
      } else if (type !== 'file') {
        yield { entry };
      } else {
        entry.size = h.filesize;
        const data = dataAt(file, dataOff, h.filesize);
        if (h.nlink <= 1) {
          yield { entry, data };
          continue;
        }
        // A hard-link group. The name that carries the data becomes the file; the others
        // become hard links to it, yielded after it (a hard link must name a file that came
        // before it). Names seen before the data wait for it.
        const key = `${h.devmajor}:${h.devminor}:${h.ino}`;
        let g = groups.get(key);
        if (!g) groups.set(key, (g = { holder: undefined, waiting: [] }));
        if (g.holder && h.filesize === 0) {
          yield { entry: linkTo(entry, g.holder) };
        } else if (h.filesize > 0 || g.holder) {
          yield { entry, data };
          if (!g.holder) {
            g.holder = entry.path;
            for (const w of g.waiting) yield { entry: linkTo(w, g.holder) };
            g.waiting = [];
          }
        } else {
          g.waiting.push(entry);
        }
      }
    }
    // Groups whose data never came: all names of an empty file.
    for (const g of groups.values()) {
      const [first, ...rest] = g.waiting;
      if (!first) continue;
      yield { entry: first, data: dataAt(file, 0, 0) };
      for (const w of rest) yield { entry: linkTo(w, first.path) };
    }
  } finally {
    closeSync(fd);
  }
}

function linkTo(e, target) {
  return { ...e, type: 'hardlink', mode: 0, uid: 0, gid: 0, mtimeNs: 0n, size: 0, target };
}

function hex8(n) {
  return n.toString(16).padStart(8, '0');
}

function header(f) {
  const s = MAGIC + FIELDS.map((k) => hex8(f[k] ?? 0)).join('');
  return Buffer.from(s, 'latin1');
}

/**
 * Writes entries (manifest order: the root first, parents before children, a hard link after
 * the file it names) as a newc archive. cpio keeps owners, modes, whole-second mtimes, hard
 * links, symlinks, devices and fifos; xattrs are dropped and sparse files are written whole.
 */
async function write(entries, file) {
  const fd = openSync(file, 'wx', 0o644);
  let pos = 0;
  const put = (buf) => {
    let done = 0;
    while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done, pos + done);
    pos += buf.length;
  };
  /** files written so far, by path: their inode number, attributes and header offsets */
  const files = new Map();
  let nextIno = 1;
  try {
    for await (const te of entries) {
      const e = te.entry;
      const name = e.path.length === 0 ? Buffer.from('.') : e.path;
      const what = JSON.stringify(name.toString());
      const too = (why) => new ReimageError('INVALID_ARGUMENT', `cpio cannot hold ${what}: ${why}`);
      if (name.length > MAX_NAME) throw too('its path is longer than 4096 bytes');
      const mtime = e.mtimeNs < 0n ? -1 : Number(e.mtimeNs / 1_000_000_000n);
      const f = {
        ino: nextIno++,
        mode: 0,
        uid: e.uid,
        gid: e.gid,
        nlink: e.type === 'dir' ? 2 : 1,
        mtime,
        filesize: 0,
        namesize: name.length + 1,
      };
      let body;
      switch (e.type) {
        case 'hardlink': {
          const t = e.target && files.get(e.target.toString('latin1'));
          if (!t) throw too('it is a hard link to a file not written before it');
          Object.assign(f, t.fields, { namesize: name.length + 1, filesize: 0 });
          t.headers.push(pos);
          break;
        }
        case 'file':
          if (e.size > U32) throw too('files of 4 GiB or more do not fit in newc');
          f.filesize = e.size;
          break;
        case 'symlink':
          body = e.target;
          f.filesize = body.length;
          break;
        case 'char':
        case 'block':
          f.rdevmajor = e.major ?? 0;
          f.rdevminor = e.minor ?? 0;
          break;
      }
      if (e.type !== 'hardlink') {
        const bits = TYPE_BITS[e.type];
        if (bits === undefined) throw too(`it is of an unknown type ${JSON.stringify(e.type)}`);
        f.mode = bits | (e.mode & 0o7777);
      }
      if (f.mtime < 0 || f.mtime > U32) throw too('its mtime is before 1970 or after 2106');
      if (e.type === 'file')
        files.set(e.path.toString('latin1'), { fields: { ...f }, headers: [pos] });
      put(header(f));
      put(name);
      put(Buffer.alloc(1 + pad4(HEADER + name.length + 1)));
      if (body) put(body);
      if (e.type === 'file') {
        await writeData(te, e, put, (n) => (pos += n), too);
      }
      put(Buffer.alloc(pad4(f.filesize)));
    }
    put(header({ nlink: 1, namesize: TRAILER.length + 1 }));
    put(TRAILER);
    put(Buffer.alloc(1 + pad4(HEADER + TRAILER.length + 1)));
    put(Buffer.alloc((BLOCK - (pos % BLOCK)) % BLOCK));
    // Every name of a hard-link group carries the group's size in c_nlink, which is only
    // known now: patch the headers in place.
    for (const { headers } of files.values()) {
      if (headers.length < 2) continue;
      const n = Buffer.from(hex8(headers.length), 'latin1');
      for (const at of headers) writeSync(fd, n, 0, 8, at + NLINK_AT);
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes a file's data regions at their offsets; holes are skipped (they read back as zeros,
 * since the archive always continues after them).
 */
async function writeData(te, e, put, skip, too) {
  const regions = e.segments ?? [[0, e.size]];
  let at = 0; // logical position in the file
  let r = -1;
  let left = 0;
  for await (const piece of te.data ? te.data() : []) {
    let off = 0;
    while (off < piece.length) {
      while (left === 0) {
        const next = regions[++r];
        if (!next) throw too('it holds more data than its size says');
        skip(next[0] - at);
        at = next[0];
        left = next[1];
      }
      const n = Math.min(left, piece.length - off);
      put(Buffer.from(piece.buffer, piece.byteOffset + off, n));
      off += n;
      at += n;
      left -= n;
    }
  }
  const rest = regions.slice(r + 1).reduce((sum, [, len]) => sum + len, 0);
  if (left > 0 || rest > 0) throw too('it holds less data than its size says');
  skip(e.size - at);
}

async function probe(file) {
  let fd;
  try {
    fd = openSync(file, 'r');
    const hdr = Buffer.alloc(HEADER);
    return readExactly(fd, hdr, 0) === HEADER && typeof parseHeader(hdr) !== 'string';
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** The ImageFormat (see docs/image-formats.md for each member's contract). */
export const cpioFormat = {
  name: 'cpio',
  extensions: ['.cpio'],
  description: 'cpio "newc" archive (initramfs, `cpio -H newc`), example plugin in pure JavaScript',
  capabilities: {
    owners: true,
    xattrs: false,
    hardlinks: true,
    devices: true,
    fifos: true,
    sparse: false,
    mtimeNs: false,
    rawNames: true,
  },
  unavailable: async () => undefined, // pure JavaScript: nothing to install
  probe,
  read,
  write,
};

export default cpioFormat;
