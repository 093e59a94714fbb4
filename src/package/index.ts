/**
 * Package documents: the package definition and deployment settings files, their schemas,
 * secrets handling, and the advertisement's notification policy on top of them.
 */
export * from './schema.js';
export * from './document.js';
export * from './secrets.js';
export * from './effective.js';
