import type { ApiClient } from './http.js';

/** What `POST /api/v1/uploads` takes (docs/upload.md). */
export interface UploadStart {
  imageId: string;
  name: string;
  properties: {
    description?: string;
    osFamily?: string;
    osVersion?: string;
    architecture?: string;
    created: string;
    sourceMachine?: string;
    custom: Record<string, string>;
  };
  imageFormat?: 'native-v1' | 'opaque';
  opaqueFormat?: string;
  parent?: string;
  signature?: { algorithm: 'ed25519'; keyId: string; value: string };
  inventory?: Record<string, unknown>;
}

/** An upload as the server counts it. */
export interface UploadStatus {
  id: string;
  imageId: string;
  name: string;
  user: string;
  state: 'open' | 'committed' | 'expired';
  /** Request body bytes the server received for the upload (cut requests included). */
  bytesReceived: number;
  requests: number;
  framesReceived: number;
  chunksStored: number;
  bytesStored: number;
  createdAt: string;
  updatedAt: string;
}

/** The upload endpoints of a management server, over the pinned client. */
export class UploadClient {
  constructor(private readonly api: ApiClient) {}

  /** The server's address (for messages). */
  get server(): string {
    return this.api.server;
  }

  start(body: UploadStart, signal?: AbortSignal) {
    return this.api.request<{ upload: UploadStatus; resumed: boolean }>('POST', '/api/v1/uploads', {
      body,
      signal,
    });
  }

  /** Which of `hashes` (hex, at most 4096) the server's library lacks. */
  async missing(id: string, hashes: string[], signal?: AbortSignal): Promise<string[]> {
    const r = await this.api.request<{ missing: string[] }>(
      'POST',
      `/api/v1/uploads/${encodeURIComponent(id)}/missing`,
      { body: { hashes }, signal },
    );
    return r.missing;
  }

  /** Sends a frame stream (src/content/frame-stream.ts). */
  putFrames(id: string, body: Uint8Array, signal?: AbortSignal) {
    return this.api.request<{
      frames: number;
      chunksStored: number;
      bytesStored: number;
      upload: UploadStatus;
    }>('PUT', `/api/v1/uploads/${encodeURIComponent(id)}/frames`, { bytes: body, signal });
  }

  /** Commits with the zstd-compressed canonical manifest; answers the catalog's image. */
  commit(id: string, manifest: Uint8Array, signal?: AbortSignal) {
    return this.api.request<{ image: Record<string, unknown>; upload: UploadStatus }>(
      'POST',
      `/api/v1/uploads/${encodeURIComponent(id)}/commit`,
      { bytes: manifest, signal },
    );
  }

  status(id: string, signal?: AbortSignal) {
    return this.api.request<UploadStatus>('GET', `/api/v1/uploads/${encodeURIComponent(id)}`, {
      signal,
    });
  }
}
