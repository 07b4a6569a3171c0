// Talking to the API: the key lives in this tab's session storage only and travels as the Bearer
// header, never in a URL or a cookie. Every request goes to this server (URLs relative to the page).

const KEY = "fwdprune.key";

export const session = {
  key: () => sessionStorage.getItem(KEY),
  remember: (key) => sessionStorage.setItem(KEY, key),
  forget: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

// a 401 anywhere sends the console back to its sign-in
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

export function url(path, query = {}) {
  const target = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") target.searchParams.set(name, value);
  }
  return target;
}

function headers(extra = {}) {
  const all = new Headers(extra);
  const key = session.key();
  if (key) all.set("Authorization", `Bearer ${key}`);
  return all;
}

async function refusal(response) {
  let detail = response.statusText;
  try {
    detail = (await response.json()).detail ?? detail;
  } catch {
    // not JSON: the status text says enough
  }
  if (response.status === 401) onUnauthorized();
  return new ApiError(response.status, detail);
}

async function send(path, { method = "GET", body, query, extraHeaders } = {}) {
  const init = { method, headers: headers(extraHeaders), cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    init.headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url(path, query), init);
  if (!response.ok) throw await refusal(response);
  return response;
}

export async function getJson(path, query) {
  return (await send(path, { query })).json();
}

export async function postJson(path, body, extraHeaders) {
  const response = await send(path, { method: "POST", body, extraHeaders });
  return response.status === 204 ? null : response.json();
}

export async function remove(path) {
  await send(path, { method: "DELETE" });
}

export async function getBlob(path, query) {
  return (await send(path, { query })).blob();
}

export async function getText(path) {
  return (await send(path)).text();
}

// An upload as a multipart form, its progress reported as a fraction; XMLHttpRequest, as fetch reports
// no upload progress.
export function upload(file, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", url("v1/files"));
    const key = session.key();
    if (key) request.setRequestHeader("Authorization", `Bearer ${key}`);
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      if (request.status === 201) {
        onProgress(1);
        resolve(request.response);
        return;
      }
      if (request.status === 401) onUnauthorized();
      reject(new ApiError(request.status, request.response?.detail ?? request.statusText));
    });
    request.addEventListener("error", () => reject(new ApiError(0, "the upload could not reach the server")));
    const form = new FormData();
    form.append("file", file, file.name);
    request.send(form);
  });
}

// Whether this server asks for a key: a loopback server started without keys answers without one.
export async function keyRequired() {
  const response = await fetch(url("v1/jobs", { limit: 1 }), { headers: headers(), cache: "no-store" });
  return response.status === 401;
}
