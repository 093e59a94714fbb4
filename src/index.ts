/**
 * reimage's public API for third parties (import from 'reimage'). Format plugins implement
 * `ImageFormat`; formats that go through a staging directory use `treeFromDirectory` to read
 * one and `applyTree` to write one safely.
 */
export type {
  ImageFormat,
  FormatCapabilities,
  ReadOptions,
  TreeEntry,
} from './image/formats/api.js';
export type { Entry, EntryType } from './image/manifest.js';
export { treeFromDirectory, applyTree, normalizeArchivePath } from './image/tree.js';
export { ReimageError } from './errors.js';
