// The storefront is served on 127.0.0.1:5173, the origin `make run` lets
// call the services (AGORA_CORS_ORIGINS), by `vite` in development and by
// `vite preview` for the built page.
import { defineConfig } from "vite";

const server = { host: "127.0.0.1", port: 5173, strictPort: true };

export default defineConfig({ server, preview: server });
